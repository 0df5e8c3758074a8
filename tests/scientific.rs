//! The `scientific` profile: numpy and pandas preloaded in the zygote from a venv (the one
//! `scripts/venv` creates; scripts/test passes it as SANDFORK_TEST_VENV_PYTHON).

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::{ok_stdout, privileged, spec, test_config};
use sandfork_protocol::client::Client;
use sandfork_protocol::{RunResult, RunSpec};

/// The venv interpreter, or None after the skip rule (a failure under CI).
fn venv_python(test: &str) -> Option<String> {
    common::test_venv_python(test).map(|python| python.display().to_string())
}

fn socket(python: &str) -> &'static PathBuf {
    static DAEMON: OnceLock<common::Daemon> = OnceLock::new();
    let daemon = DAEMON.get_or_init(|| {
        common::start_private_daemon("sandfork-scientific-", |dir| {
            let profiles = format!(
                "[profiles.scientific]\npython = \"{python}\"\npreload = [\"@stdlib\", \"numpy\", \"pandas\"]\nwarm_children = 2\n"
            );
            test_config(dir, &profiles)
        })
    });
    &daemon.socket
}

async fn run(python: &str, code: &str) -> RunResult {
    let mut client = Client::connect(socket(python)).await.unwrap();
    client
        .run(RunSpec {
            profile: Some("scientific".into()),
            ..spec(code)
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn pandas_and_numpy_run_preloaded() {
    if !privileged("pandas_and_numpy_run_preloaded") {
        return;
    }
    let Some(python) = venv_python("pandas_and_numpy_run_preloaded") else {
        return;
    };
    let result = run(
        &python,
        "import pandas as pd\nprint(pd.DataFrame({'a': [1, 2]}).sum().iloc[0])",
    )
    .await;
    assert_eq!(ok_stdout(&result), "3\n");
    let result = run(
        &python,
        "import sys, numpy as np\nprint('numpy' in sys.modules, np.arange(10).reshape(2, 5).sum(axis=1).tolist(), round(float(np.linalg.det(np.array([[2.0, 1.0], [1.0, 3.0]]))), 6))",
    )
    .await;
    assert_eq!(ok_stdout(&result), "True [10, 35] 5.0\n");
}

#[tokio::test]
async fn blas_stays_single_threaded_and_isolated() {
    if !privileged("blas_stays_single_threaded_and_isolated") {
        return;
    }
    let Some(python) = venv_python("blas_stays_single_threaded_and_isolated") else {
        return;
    };
    // A matrix product big enough that OpenBLAS would use its thread pool if it had one; the
    // environment pins it to one thread (DESIGN §8), and the layers are the same as anywhere.
    let code = r#"
import os, threading, socket, numpy as np
a = np.ones((300, 300))
print((a @ a)[0, 0], threading.active_count(), os.environ.get('OPENBLAS_NUM_THREADS'))
try:
    socket.socket()
    print('ESCAPED')
except PermissionError:
    print('no sockets')
"#;
    assert_eq!(
        ok_stdout(&run(&python, code).await),
        "300.0 1 1\nno sockets\n"
    );
}

/// Issue 13, defect 7: the children of one zygote would share the generators the zygote's
/// preload created; each run reseeds them from the kernel, so no run can predict another's
/// "random" numbers.
#[tokio::test]
async fn runs_of_one_zygote_draw_different_random_numbers() {
    if !privileged("runs_of_one_zygote_draw_different_random_numbers") {
        return;
    }
    let Some(python) = venv_python("runs_of_one_zygote_draw_different_random_numbers") else {
        return;
    };
    let code = "import random, numpy as np\nprint(np.random.rand(), np.random.randint(1 << 30), random.random())\n";
    let mut draws = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let result = run(&python, code).await;
        let line = ok_stdout(&result);
        let fields: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        assert_eq!(fields.len(), 3, "{line}");
        for (n, field) in fields.into_iter().enumerate() {
            assert!(
                draws.insert((n, field.clone())),
                "a draw repeated: {field} ({line})"
            );
        }
    }
}
