from kcm.service_maker import PlaneServiceMaker

kcm_core = PlaneServiceMaker("kcm-core", "kcm.core.tap", "KCM control plane: a KMIP server",
                             "kcm-core")
