"""The KMIP server kernel: the rules both planes share, with no I/O.

Protocol versions (:mod:`.versions`), the key lifecycle (:mod:`.lifecycle`), whether a key
may be put to a use now (:mod:`.key_use`), Result Reasons
in the words of each protocol version (:mod:`.result_reasons`), response headers and failed
items (:mod:`.responses`) and batch semantics (:mod:`.batch`). kcm-core runs batches with a
transaction and an audit log around them; kcm-gateway with the L4 engine or the link to the
core. The kernel imports only the codec (:mod:`kcm.ttlv`) and the model (:mod:`kcm.kmip`).
"""
