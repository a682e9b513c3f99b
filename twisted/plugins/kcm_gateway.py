from kcm.service_maker import PlaneServiceMaker

kcm_gateway = PlaneServiceMaker("kcm-gateway", "kcm.gateway.tap",
                                "KCM data plane: serves L4 keys locally, forwards the rest to "
                                "the core", "kcm-gateway")
