from twisted.application.service import ServiceMaker

kcm_gateway = ServiceMaker("kcm-gateway", "kcm.gateway.tap",
                           "KCM data plane: serves L4 keys locally, forwards the rest to the core",
                           "kcm-gateway")
