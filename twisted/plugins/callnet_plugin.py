"""The C{twistd callnet} plugin: see L{callnet.tap}, imported only when used."""

from twisted.application.service import ServiceMaker

callnet_node = ServiceMaker(
    "callnet", "callnet.tap", "Run a callnet node serving procedures to callers.", "callnet"
)
