"""Print what stage 2 needs from the Python that runs this script, as JSON.

Imports the node's modules and reports the interpreter, its stdlib, and the top-level
site packages (with their bundled-library folders such as ``pyzmq.libs``) that were loaded.
"""

import importlib
import importlib.metadata
import json
import os
import sys
import sysconfig

WANTED = ["pyphase", "pyphase._core", "pyphase.cli", "pyphase.boot", "pyphase.daemon", "nacl.signing",
          "nacl.bindings", "zmq", "msgpack", "fastjsonschema", "pyphase.net.client", "pyphase.net.discovery",
          "zeroconf", "ifaddr",  # these three: mDNS in Local mode (imported lazily by plasmd)
          "pyphase.api.server", "pyphase.api.services", "aiohttp", "prometheus_client", "sqlite3",  # the HTTP API
          "libtorrent", "pyphase.net.dhtnode"]  # the Mainline DHT in Internet mode (libtorrent's PyPI wheel)
baseline = set(sys.modules)
loaded, missing = [], []
for name in WANTED:
    try:
        importlib.import_module(name)
        loaded.append(name)
    except Exception as exc:  # report, the builder decides
        missing.append(f"{name}: {type(exc).__name__}: {exc}")

stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
roots = {}
for key, mod in list(sys.modules.items()):
    if key in baseline and not key.startswith("pyphase"):
        continue
    f = getattr(mod, "__file__", None)
    if not f:
        continue
    f = os.path.realpath(f)
    if f.startswith(stdlib + os.sep) and "site-packages" not in f and "dist-packages" not in f:
        continue
    top = mod.__name__.split(".")[0]
    if top == "pyphase":
        roots["pyphase"] = [os.path.dirname(os.path.realpath(sys.modules["pyphase"].__file__))]
        # Compiled extensions may sit apart from the sources (editable installs): take every one
        # beside _core, imported yet or not (sandbox workers load theirs later).
        core = sys.modules.get("pyphase._core")
        if core is not None and getattr(core, "__file__", None):
            ext_dir = os.path.dirname(os.path.realpath(core.__file__))
            for dirpath, _, files in os.walk(ext_dir):
                for name in files:
                    if ".so" in name:
                        roots["pyphase"].append(os.path.join(dirpath, name))
        continue
    base = f
    while os.path.basename(os.path.dirname(base)) not in ("site-packages", "dist-packages"):
        parent = os.path.dirname(base)
        if parent == base:
            break
        base = parent
    roots.setdefault(top, [base])
site_dirs = {os.path.dirname(p[0]) for k, p in roots.items() if k != "pyphase"}
dists = importlib.metadata.packages_distributions()
wanted_libs = {f"{d}.libs".lower() for top in roots for d in dists.get(top, [])} | {f"{t}.libs" for t in roots}
libdirs = [os.path.join(d, e) for d in site_dirs for e in os.listdir(d) if e.lower() in wanted_libs]
print(json.dumps({"executable": os.path.realpath(sys.executable), "stdlib": stdlib,
                  "version": f"{sys.version_info[0]}.{sys.version_info[1]}",
                  "roots": roots, "libdirs": libdirs, "loaded": loaded, "missing": missing}))
