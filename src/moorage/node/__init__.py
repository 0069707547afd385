"""Host mechanisms: namespaces, cgroups, CNI, security. Every function takes its root path; nothing here imports
from :mod:`moorage.runtime` or :mod:`moorage.api`."""
