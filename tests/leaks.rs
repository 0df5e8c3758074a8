//! Nothing of one run is visible to the next: not its code, not its objects, not its files.
//! Both runs go to the same zygote (the default profile has one), which is the case that matters.

mod common;

use common::{ok_stdout, privileged, run};

#[tokio::test]
async fn run_b_finds_nothing_of_run_a() {
    if !privileged("run_b_finds_nothing_of_run_a") {
        return;
    }
    // Run A: plants its marker everywhere it can.
    let marker = format!("SECRET{}", std::process::id());
    let run_a = format!(
        r#"
import json, os, sys, colorsys, builtins
SECRET = 'LEAK' + 'MARK' + '{marker}'
json.PLANTED = SECRET
builtins.PLANTED = SECRET
sys.modules['planted_module'] = type(sys)('planted_module')
os.environ['PLANTED'] = SECRET
with open('left-behind.txt', 'w') as f:
    f.write(SECRET)
for path in ('/dev/shm/left', '/tmp/left', '/sandbox/left'):
    try:
        open(path, 'w').write(SECRET)
        print('wrote', path)
    except OSError:
        pass
print('planted')
"#
    );
    assert_eq!(ok_stdout(&run(&run_a).await), "planted\n");

    // Run B: looks for it.
    let run_b = r#"
import gc, json, os, sys, builtins, linecache
needle = 'LEAK' + 'MARK'
control = ['LEAK' + 'MARK' + 'control']  # proves the search below can find a planted string
found = []
for obj in gc.get_objects():
    if isinstance(obj, str) and needle in obj and obj is not needle:
        found.append('gc:' + obj[:40])
for ref in gc.get_referents(*gc.get_objects()):
    if isinstance(ref, str) and needle in ref and ref is not needle:
        found.append('ref:' + ref[:40])
if hasattr(json, 'PLANTED'): found.append('json.PLANTED')
if hasattr(builtins, 'PLANTED'): found.append('builtins.PLANTED')
if 'planted_module' in sys.modules: found.append('sys.modules')
if 'colorsys' in sys.modules: found.append('colorsys imported by A')
if 'PLANTED' in os.environ: found.append('environ')
if os.listdir('.'): found.append('files:' + ','.join(os.listdir('.')))
for path in ('/dev/shm/left', '/tmp/left', '/sandbox/left'):
    if os.path.exists(path): found.append(path)
for name, entry in linecache.cache.items():
    if needle in ''.join(entry[2] if len(entry) > 2 else []):
        found.append('linecache:' + name)
found = sorted(set(f for f in found if 'control' not in f))
key = needle + 'control'
print('control seen', any(o == key and o is not key for o in gc.get_referents(*gc.get_objects()) if isinstance(o, str)))
print('found', found)
"#;
    assert_eq!(
        ok_stdout(&run(run_b).await),
        "control seen True\nfound []\n"
    );
}

#[tokio::test]
async fn the_code_text_never_reaches_the_zygote() {
    if !privileged("the_code_text_never_reaches_the_zygote") {
        return;
    }
    // If the zygote had read a run's code, later children (forked from it) would hold a copy.
    let marker = format!("ZYGOTEPROBE{}", std::process::id());
    let first = format!("x = '{marker}'\nprint(len(x))");
    assert_eq!(ok_stdout(&run(&first).await), format!("{}\n", marker.len()));
    let probe = format!(
        "import gc\nneedle = 'ZYGOTE' + 'PROBE' + '{}'\ncontrol = [needle + 'control']\nobjs = gc.get_objects()\n# str objects are not GC-tracked: look at what tracked objects refer to.\nprint(sum(1 for o in gc.get_referents(*objs) if isinstance(o, str) and needle in o and o is not needle))",
        std::process::id()
    );
    // Exactly one hit: the control string this probe planted itself.
    assert_eq!(ok_stdout(&run(&probe).await), "1\n");
}
