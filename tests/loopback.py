"""HTTP for tests and benchmarks, to loopback only: an opener that ignores any http(s)_proxy
in the environment (a proxy would carry a request for a 127.x pod IP off the machine)."""

import urllib.request

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
