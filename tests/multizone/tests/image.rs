//! The container image (deploy/image): the binaries, the shared libraries they load, the
//! non-root user, nothing else; built with the real buildah from the Containerfile, and a
//! binary run inside it.
//!
//! `deploy/image/build-rootfs.sh` assembles the root filesystem from the binaries of this
//! build and the host's iptables (nf_tables variant, with its extensions), which the injected
//! init container runs. Its file list is checked against what `ldd` says each binary and
//! extension loads; as root, each binary then runs inside that root as user 65532 (`chroot
//! --userspec`), so a missing library fails here, and `strait-dp transparent-proxy install`
//! runs inside it in a network namespace of its own, as the init container does, and leaves
//! its rules there; where buildah is installed (always in CI), the image is built from the
//! Containerfile, its user checked, and `strait-zone --version` run inside it.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use strait_multizone::{bin_dir, system_program};

const BINARIES: [&str; 5] = ["strait-global", "strait-zone", "strait-gateway", "strait-dp", "straitctl"];

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().expect("run a command");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn is_root() -> bool {
    run("id", &["-u"]).1.trim() == "0"
}

/// The shared libraries (and loader) that ldd says `binary` loads.
fn libraries(binary: &Path) -> BTreeSet<String> {
    let (ok, text) = run("ldd", &[binary.to_str().unwrap()]);
    assert!(ok, "ldd {}: {text}", binary.display());
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            match l.split_once("=> ") {
                Some((_, rest)) => rest.split_whitespace().next().filter(|p| p.starts_with('/')).map(str::to_string),
                None => l.split_whitespace().next().filter(|p| p.starts_with('/')).map(str::to_string),
            }
        })
        .collect()
}

#[test]
fn the_image_holds_the_binaries_their_libraries_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("context");
    let rootfs = context.join("rootfs");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/image/build-rootfs.sh");
    let (ok, listing) = run("bash", &[script, rootfs.to_str().unwrap(), bin_dir().to_str().unwrap()]);
    assert!(ok, "build-rootfs.sh failed: {listing}");
    let files: BTreeSet<String> = listing.lines().map(str::to_string).collect();

    let mut expected: BTreeSet<String> = BINARIES.iter().map(|b| format!("/usr/bin/{b}")).collect();
    expected.insert("/etc/passwd".into());
    expected.insert("/etc/group".into());
    for b in BINARIES {
        expected.extend(libraries(&bin_dir().join(b)));
    }
    let xtables = Path::new("/usr/sbin/xtables-nft-multi");
    expected.insert(xtables.display().to_string());
    expected.extend(libraries(xtables));
    let extensions = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path().join("xtables")))
        .find(|dir| dir.join("libxt_owner.so").exists())
        .expect("iptables' extensions");
    for extension in std::fs::read_dir(&extensions).unwrap().filter_map(|e| e.ok().map(|e| e.path())) {
        if extension.extension().is_some_and(|x| x == "so") {
            expected.insert(extension.display().to_string());
            expected.extend(libraries(&extension));
        }
    }
    assert_eq!(files, expected, "the image holds exactly the binaries, their libraries and the user");
    assert!(!rootfs.join("bin/sh").exists() && !rootfs.join("usr/bin/sh").exists(), "no shell");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.starts_with("strait:x:65532:65532:"), "{passwd}");

    if !is_root() {
        println!("SKIPPED running the binaries inside the image: chroot needs root");
        return;
    }
    for b in BINARIES {
        let (ok, text) = run("chroot", &["--userspec=65532:65532", rootfs.to_str().unwrap(), &format!("/usr/bin/{b}"), "--version"]);
        assert!(ok && text.contains("0.1.0"), "{b} --version inside the image as user 65532: {text}");
    }
    let (shell, _) = run("chroot", &[rootfs.to_str().unwrap(), "/bin/sh", "-c", "true"]);
    assert!(!shell, "a shell ran inside the image");
    for name in ["iptables", "ip6tables", "iptables-restore", "iptables-save"] {
        let target = std::fs::read_link(rootfs.join("usr/sbin").join(name)).unwrap_or_else(|e| panic!("/usr/sbin/{name}: {e}"));
        assert_eq!(target, Path::new("xtables-nft-multi"), "/usr/sbin/{name}");
    }

    // The injected init container: the transparent proxy's rules, installed from inside the
    // image (its PATH, its iptables) into a network namespace of its own. The runtime gives a
    // container /dev; the chroot gets /dev/null.
    if system_program(&["ip"], "iproute2").is_some() {
        std::fs::create_dir_all(rootfs.join("dev")).unwrap();
        let (ok, text) = run("mknod", &["-m", "666", rootfs.join("dev/null").to_str().unwrap(), "c", "1", "3"]);
        assert!(ok, "mknod /dev/null: {text}");
        let ns = format!("strait-image-{}", std::process::id());
        let (ok, text) = run("ip", &["netns", "add", &ns]);
        assert!(ok, "ip netns add: {text}");
        let installed = run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "env",
                "-i",
                "PATH=/usr/bin:/usr/sbin",
                "chroot",
                rootfs.to_str().unwrap(),
                "/usr/bin/strait-dp",
                "transparent-proxy",
                "install",
                "--proxy-uid=5678",
            ],
        );
        let rules = run("ip", &["netns", "exec", &ns, "chroot", rootfs.to_str().unwrap(), "/usr/sbin/iptables", "-t", "nat", "-S"]);
        let _ = run("ip", &["netns", "del", &ns]);
        assert!(installed.0, "transparent-proxy install inside the image: {}", installed.1);
        assert!(rules.1.contains("-A STRAIT_OUTBOUND -m owner --uid-owner 5678 -j RETURN"), "the rules inside the namespace:\n{}", rules.1);
    }

    let Some(buildah) = system_program(&["buildah"], "buildah") else { return };
    let (storage, runroot) = (dir.path().join("storage"), dir.path().join("run"));
    let root_flags = ["--root", storage.to_str().unwrap(), "--runroot", runroot.to_str().unwrap(), "--storage-driver", "vfs"];
    let buildah_run = |args: &[&str]| {
        let all: Vec<&str> = root_flags.iter().copied().chain(args.iter().copied()).collect();
        run(&buildah, &all)
    };
    let containerfile = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/image/Containerfile");
    let (ok, text) = buildah_run(&["bud", "--isolation", "chroot", "-f", containerfile, "-t", "strait:test", context.to_str().unwrap()]);
    assert!(ok, "buildah bud: {text}");
    let (ok, user) = buildah_run(&["inspect", "--type", "image", "--format", "{{.OCIv1.Config.User}}", "strait:test"]);
    assert!(ok && user.trim() == "65532:65532", "the image's user: {user}");
    let (ok, container) = buildah_run(&["from", "strait:test"]);
    assert!(ok, "buildah from: {container}");
    let container = container.trim().lines().last().unwrap_or_default().to_string();
    let (ok, text) = buildah_run(&["run", "--isolation", "chroot", &container, "--", "/usr/bin/strait-zone", "--version"]);
    assert!(ok && text.contains("strait-zone 0.1.0"), "strait-zone inside the built image: {text}");
    let _ = buildah_run(&["rm", &container]);
}
