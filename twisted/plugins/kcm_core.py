from twisted.application.service import ServiceMaker

kcm_core = ServiceMaker("kcm-core", "kcm.core.tap", "KCM control plane: a KMIP server", "kcm-core")
