"""fedbackdoor: federated-learning backdoor and poisoning simulations on Flower."""

from fedbackdoor import resolvers as _resolvers

_resolvers.register()
