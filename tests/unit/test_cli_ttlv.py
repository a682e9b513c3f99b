"""``kcm ttlv``: dump, to-xml and from-xml, in process and once as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kcm.cli import main, ttlv_cmd
from kcm.kmip.xml_encoding import items_from_xml, items_to_xml
from kcm.ttlv import encode

REPO = Path(__file__).resolve().parents[2]

REQUEST_XML = """<RequestMessage>
  <RequestHeader>
    <ProtocolVersion>
      <ProtocolVersionMajor type="Integer" value="1"/>
      <ProtocolVersionMinor type="Integer" value="4"/>
    </ProtocolVersion>
    <BatchCount type="Integer" value="1"/>
  </RequestHeader>
  <BatchItem>
    <Operation type="Enumeration" value="Create"/>
    <RequestPayload>
      <ObjectType type="Enumeration" value="SymmetricKey"/>
      <TemplateAttribute>
        <Attribute>
          <AttributeName type="TextString" value="Cryptographic Usage Mask"/>
          <AttributeValue type="Integer" value="Encrypt Decrypt"/>
        </Attribute>
        <Attribute>
          <AttributeName type="TextString" value="Activation Date"/>
          <AttributeValue type="DateTime" value="2012-04-27T08:12:55+00:00"/>
        </Attribute>
      </TemplateAttribute>
    </RequestPayload>
  </BatchItem>
</RequestMessage>
"""

REQUEST_DUMP = """\
RequestMessage (0x420078) Structure
  RequestHeader (0x420077) Structure
    ProtocolVersion (0x420069) Structure
      ProtocolVersionMajor (0x42006A) Integer: 1
      ProtocolVersionMinor (0x42006B) Integer: 4
    BatchCount (0x42000D) Integer: 1
  BatchItem (0x42000F) Structure
    Operation (0x42005C) Enumeration: Create (0x00000001)
    RequestPayload (0x420079) Structure
      ObjectType (0x420057) Enumeration: SymmetricKey (0x00000002)
      TemplateAttribute (0x420091) Structure
        Attribute (0x420008) Structure
          AttributeName (0x42000A) TextString: "Cryptographic Usage Mask"
          AttributeValue (0x42000B) Integer: Encrypt Decrypt (12)
        Attribute (0x420008) Structure
          AttributeName (0x42000A) TextString: "Activation Date"
          AttributeValue (0x42000B) DateTime: 2012-04-27T08:12:55+00:00 (1335514375)
"""

RESPONSE_XML = """<ResponseMessage>
  <ResponseHeader>
    <ProtocolVersion>
      <ProtocolVersionMajor type="Integer" value="2"/>
      <ProtocolVersionMinor type="Integer" value="1"/>
    </ProtocolVersion>
    <TimeStamp type="DateTime" value="$NOW"/>
    <BatchCount type="Integer" value="1"/>
  </ResponseHeader>
  <BatchItem>
    <Operation type="Enumeration" value="Create"/>
    <ResultStatus type="Enumeration" value="Success"/>
    <ResponsePayload>
      <ObjectType type="Enumeration" value="SymmetricKey"/>
      <UniqueIdentifier type="TextString" value="$UNIQUE_IDENTIFIER_0"/>
      <KeyMaterial type="ByteString" value="00ff"/>
    </ResponsePayload>
  </BatchItem>
</ResponseMessage>
"""

REQUEST_WIRE = encode(items_from_xml(REQUEST_XML)[0])


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(ttlv_cmd, "clock", lambda: 1_600_000_000.5)
    return 1_600_000_000


def write(tmp_path: Path, name: str, data: bytes | str) -> str:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return str(path)


def test_dump_binary_names_enumerations_masks_and_sibling_attributes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ttlv", "dump", write(tmp_path, "m.ttlv", REQUEST_WIRE)]) == 0
    out, err = capsys.readouterr()
    assert out == REQUEST_DUMP
    assert err == ""


def test_dump_detects_hex_and_reads_concatenated_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    response = encode(items_from_xml(RESPONSE_XML.replace("$NOW", "2020-01-01T00:00:00Z")
                                     .replace("$UNIQUE_IDENTIFIER_0", "uid-1"))[0])
    hex_text = REQUEST_WIRE.hex().upper() + "\n" + response.hex() + "\n"
    assert main(["ttlv", "dump", write(tmp_path, "m.hex", hex_text)]) == 0
    out = capsys.readouterr().out
    request_dump, response_dump = out.split("\n\n")
    assert request_dump + "\n" == REQUEST_DUMP
    assert "  ResponseHeader (0x42007A) Structure\n" in response_dump
    assert 'UniqueIdentifier (0x420094) TextString: "uid-1"' in response_dump
    assert "KeyMaterial (0x420043) ByteString: 00ff (2 bytes)" in response_dump
    assert "ResultStatus (0x42007F) Enumeration: Success (0x00000000)" in response_dump


def test_to_xml_writes_an_oasis_document(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    wire = REQUEST_WIRE + REQUEST_WIRE
    assert main(["ttlv", "to-xml", write(tmp_path, "m.ttlv", wire)]) == 0
    out = capsys.readouterr().out
    assert out == items_to_xml(items_from_xml(REQUEST_XML) * 2)
    assert out.startswith("<KMIP>\n\n<RequestMessage>\n") and REQUEST_XML in out
    assert main(["ttlv", "to-xml", "--hex", write(tmp_path, "m.hex", wire.hex())]) == 0
    assert capsys.readouterr().out == out


def test_from_xml_writes_binary_ttlv(tmp_path: Path,
                                     capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    document = f"<KMIP>\n{REQUEST_XML}\n{REQUEST_XML}</KMIP>\n"
    assert main(["ttlv", "from-xml", write(tmp_path, "m.xml", document)]) == 0
    out, err = capsysbinary.readouterr()
    assert out == REQUEST_WIRE + REQUEST_WIRE
    assert err == b""


def test_from_xml_hex_resolves_placeholders_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fixed_clock: int
) -> None:
    document = f"<KMIP>\n{REQUEST_XML}\n{RESPONSE_XML}</KMIP>\n"
    assert main(["ttlv", "from-xml", "--hex", write(tmp_path, "m.xml", document)]) == 0
    out, err = capsys.readouterr()
    request_hex, response_hex = out.splitlines()
    assert bytes.fromhex(request_hex) == REQUEST_WIRE
    assert request_hex == REQUEST_WIRE.hex().upper()
    assert "$NOW" in err and "$UNIQUE_IDENTIFIER_0" in err and str(fixed_clock) in err
    assert len(err.splitlines()) == 1
    # The dump shows what the placeholders became.
    assert main(["ttlv", "dump", "--hex", write(tmp_path, "r.hex", response_hex)]) == 0
    dump = capsys.readouterr().out
    assert "TimeStamp (0x420092) DateTime: 2020-09-13T12:26:40+00:00 (1600000000)" in dump
    assert 'TextString: "$UNIQUE_IDENTIFIER_0"' in dump


def test_truncated_message_fails_with_the_byte_offset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = REQUEST_WIRE + REQUEST_WIRE[:-8]
    assert main(["ttlv", "dump", write(tmp_path, "m.ttlv", truncated)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"kcm ttlv dump: error: byte offset {len(REQUEST_WIRE)}: "
                   f"structure length {len(REQUEST_WIRE) - 8} overruns its container\n")


@pytest.mark.parametrize(
    ("argv", "data", "expected"),
    [
        (["ttlv", "dump", "--hex"], b"42007801zz", "hex input: character 8 is not a hex digit"),
        (["ttlv", "dump", "--hex"], b"420", "odd number of hex digits"),
        (["ttlv", "to-xml"], b"", "no TTLV input"),
        (["ttlv", "to-xml"], b"\x42\x00\x78\xee\x00\x00\x00\x00", "byte offset 3: unknown item"),
        (["ttlv", "from-xml"], b"<KMIP>\n<RequestMessage>\n</KMIP>",
         "line 3: malformed XML: mismatched tag"),
        (["ttlv", "from-xml"], b'<KMIP>\n<Nope type="Integer" value="1"/>\n</KMIP>',
         "KMIP/Nope[0] (line 2): unknown element name 'Nope'"),
        (["ttlv", "from-xml"], b"<KMIP>\xff</KMIP>", "byte offset 6 is not UTF-8"),
        (["ttlv", "from-xml"], b"<KMIP/>", "holds no messages"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], data: bytes,
    expected: str,
) -> None:
    assert main([*argv, write(tmp_path, "input", data)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"kcm {' '.join(argv[:2])}: error: ")
    assert expected in err


def test_missing_file_and_bad_usage_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ttlv", "dump", "/nonexistent/file"]) == 2
    assert "cannot read /nonexistent/file" in capsys.readouterr().err
    assert main(["ttlv"]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["--help"]) == 0
    assert "ttlv" in capsys.readouterr().out


def test_python_dash_m_kcm_reads_hex_from_stdin() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kcm", "ttlv", "dump", "--hex"],
        input=REQUEST_WIRE.hex().encode(), capture_output=True, cwd=REPO, timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout.decode() == REQUEST_DUMP
    truncated = subprocess.run(
        [sys.executable, "-m", "kcm", "ttlv", "dump", "--hex", "-"],
        input=REQUEST_WIRE[:-3].hex().encode(), capture_output=True, cwd=REPO, timeout=60,
    )
    assert truncated.returncode == 2
    assert truncated.stdout == b""
    assert truncated.stderr.decode().startswith("kcm ttlv dump: error: byte offset 0: ")
