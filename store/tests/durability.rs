//! An acknowledged write survives the process being killed with SIGKILL.
//!
//! The test re-runs this test binary as a child that writes in a loop and prints each
//! acknowledged write; the parent kills it right after reading acknowledgements, reopens the
//! store and checks every acknowledged object is there.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::json;
use strait_store::{Key, Precondition, SledStore, Store};

/// Tells the re-run binary which directory to write to; unset in a normal test run.
const CHILD_DIR: &str = "STRAIT_STORE_TEST_CHILD_DIR";
const ACKED: u64 = 30;

fn key(n: u64) -> Key {
    Key::new("K", "", format!("o{n}"))
}

/// The child half: does nothing unless started by `acknowledged_writes_survive_kill_9`.
#[tokio::test]
async fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let store = SledStore::open(&PathBuf::from(dir)).unwrap();
    for n in 1.. {
        store.put(key(n), json!({"n": n}), Precondition::None).await.unwrap();
        println!("acked {n}");
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = 0;
    for line in BufReader::new(stdout).lines() {
        if let Some(n) = line.unwrap().strip_prefix("acked ") {
            acked = n.parse().unwrap();
            if acked >= ACKED {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(acked >= ACKED, "child stopped after {acked} writes");

    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let store = SledStore::open(&path).unwrap();
        assert!(store.revision() >= acked, "revision {} < acked {acked}", store.revision());
        for n in 1..=acked {
            let object = store.get(&key(n)).await.unwrap();
            assert_eq!(object.map(|o| o.data), Some(json!({"n": n})), "acknowledged write {n} lost");
        }
    });
}
