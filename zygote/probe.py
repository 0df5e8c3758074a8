"""sandfork interpreter probe: run once per profile at daemon start-up, outside any jail.

Prints one JSON object describing what a zygote of this interpreter needs inside its jail: the
real executable (pyenv shims and other wrappers resolved by asking the interpreter itself), its
prefixes and import path, and every shared object it maps after importing the profile's preload
list and every stdlib extension module (so libraries that user code may import later are there).
argv[1] is a JSON list of module names to preload.
"""

import importlib
import json
import os
import sys
import sysconfig


def import_quietly(name):
    try:
        importlib.import_module(name)
        return None
    except BaseException as err:  # noqa: BLE001 - any failure is reported, not fatal
        return "%s: %s" % (type(err).__name__, err)


def main():
    preload = json.loads(sys.argv[1]) if len(sys.argv) > 1 else []
    failed = {}
    for name in preload:
        err = import_quietly(name)
        if err:
            failed[name] = err
    dynload = os.path.join(sysconfig.get_paths()["platstdlib"], "lib-dynload")
    if os.path.isdir(dynload):
        for entry in sorted(os.listdir(dynload)):
            if entry.endswith(".so") and not entry.startswith(("_test", "xxlimited", "_xx")):
                import_quietly(entry.split(".", 1)[0])
    mapped = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                mapped.add(parts[5].strip())
    print(
        json.dumps(
            {
                "executable": sys.executable,
                "version": sys.version.split()[0],
                "prefix": sys.prefix,
                "base_prefix": sys.base_prefix,
                "exec_prefix": sys.exec_prefix,
                "base_exec_prefix": sys.base_exec_prefix,
                "path": [p for p in sys.path if p],
                "mapped": sorted(mapped),
                "preload_failed": failed,
            }
        )
    )


main()
