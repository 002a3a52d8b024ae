//! Signed layers: with `--trust-key`, only refs signed by a trusted key are mounted (and their
//! pinned ancestors, which the signature covers); forgeries are integrity failures (exit 4) that
//! fall over to the next store like any corrupt object. On file:// stores and on moto.

mod common;
use common::emulators::*;
use common::*;
use std::path::{Path, PathBuf};

fn keygen(s: &Scratch, name: &str) -> (PathBuf, PathBuf) {
    let k = s.path(name);
    assert_ok(&s.wsfs(&["keygen", "--out", k.to_str().unwrap()]));
    let public = PathBuf::from(format!("{}.pub", k.display()));
    (k, public)
}

fn src(s: &Scratch, name: &str, content: &str) -> PathBuf {
    let d = s.path(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("artifact"), content).unwrap();
    d
}

fn ref_path(store_dir: &Path, layer: &str) -> PathBuf {
    store_dir.join(format!("workspaces/ws/layers/{layer}"))
}

fn read_ref(store_dir: &Path, layer: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(ref_path(store_dir, layer)).unwrap()).unwrap()
}

fn write_ref(store_dir: &Path, layer: &str, v: &serde_json::Value) {
    std::fs::write(ref_path(store_dir, layer), serde_json::to_vec(v).unwrap()).unwrap();
}

fn trust<'a>(keys: &'a [&'a Path]) -> Vec<String> {
    keys.iter()
        .flat_map(|k| ["--trust-key".to_string(), k.display().to_string()])
        .collect()
}

#[test]
fn only_layers_signed_by_a_trusted_key_mount() {
    require_fuse();
    let s = Scratch::new();
    let (ci, ci_pub) = keygen(&s, "ci.key");
    let (_evil, evil_pub) = keygen(&s, "evil.key");
    let st = vec![s.store("s1")];
    let base = src(&s, "base", "base v1\n");
    let app = src(&s, "app", "app built on base v1\n");
    let sign = ["--sign-key", ci.to_str().unwrap()];
    assert_ok(&persist(&s, &st, "ws", "base", &base, &sign));
    let mut a = sign.to_vec();
    a.extend(["--parent", "base"]);
    assert_ok(&persist(&s, &st, "ws", "app", &app, &a));
    let mp = s.mkdir("mnt");
    let t = trust(&[ci_pub.as_path()]);
    let tr: Vec<&str> = t.iter().map(|x| x.as_str()).collect();
    // A signed round trip, ancestor included; status names the signer per layer.
    let m = mount(&s, &st, "ws", &["app"], &mp, &tr);
    assert_eq!(
        std::fs::read_to_string(mp.join("artifact")).unwrap(),
        "app built on base v1\n"
    );
    let stt = mount_status(&s, &mp);
    let key_id = std::fs::read_to_string(&ci_pub).unwrap();
    let key_id = key_id.split_whitespace().nth(2).unwrap().to_string();
    assert_eq!(stt.signers["app"], key_id, "{stt:?}");
    assert_eq!(stt.signers["base"], "pinned by app", "{stt:?}");
    drop(m);
    let good = read_ref(&s.path("s1"), "app");
    let refuse = |why: &str| {
        let o = mount_cmd(&s, &st, "ws", &["app"], &mp, &tr);
        if o.status.success() {
            teardown(&s.run_dir(), &mp);
        }
        assert_eq!(o.status.code(), Some(4), "{why}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            err.contains("\"app\"") && err.contains(&s.store("s1")),
            "{why}: {err}"
        );
        assert!(!is_mounted(&mp), "{why}");
        err
    };
    // 1. The ref re-signed by an untrusted key (the attacker rewrote it with their manifest).
    assert_ok(&persist(
        &s,
        &st,
        "ws",
        "app",
        &src(&s, "evil", "evil\n"),
        &[
            "--sign-key",
            s.path("evil.key").to_str().unwrap(),
            "--parent",
            "base",
        ],
    ));
    assert!(refuse("untrusted signer").contains("not trusted"));
    // 2. The manifest digest swapped for another valid manifest, signature kept.
    let other = read_ref(&s.path("s1"), "app")["manifest"].clone();
    let mut swapped = good.clone();
    swapped["manifest"] = other.clone();
    write_ref(&s.path("s1"), "app", &swapped);
    assert!(refuse("swapped manifest").contains("does not verify"));
    // 3. Unsigned.
    let mut unsigned = good.clone();
    unsigned.as_object_mut().unwrap().remove("signature");
    write_ref(&s.path("s1"), "app", &unsigned);
    assert!(refuse("unsigned").contains("unsigned"));
    // 4. A valid signature copied from another layer's ref.
    write_ref(&s.path("s1"), "app", &read_ref(&s.path("s1"), "base"));
    assert!(refuse("another layer's ref").contains("does not verify"));
    // 5. Tampered pins: the signature covers them.
    let mut pins = good.clone();
    pins["ancestors"]["base"] = other;
    write_ref(&s.path("s1"), "app", &pins);
    refuse("altered pins");
    // The good ref mounts again; without --trust-key nothing changes (and status says unsigned
    // for an unsigned ref).
    write_ref(&s.path("s1"), "app", &good);
    drop(mount(&s, &st, "ws", &["app"], &mp, &tr));
    write_ref(&s.path("s1"), "app", &unsigned);
    let m = mount(&s, &st, "ws", &["app"], &mp, &[]);
    assert_eq!(mount_status(&s, &mp).signers["app"], "unsigned");
    drop(m);
    // verify reports the signer, and refuses with --trust-key (exit 4).
    let o = s.wsfs(&[
        "verify",
        "--store",
        &st[0],
        "--workspace",
        "ws",
        "--layer",
        "base",
        "--trust-key",
        evil_pub.to_str().unwrap(),
    ]);
    assert_code(&o, 4);
    let o = s.wsfs(&[
        "verify",
        "--store",
        &st[0],
        "--workspace",
        "ws",
        "--layer",
        "base",
    ]);
    assert_ok(&o);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&key_id),
        "{}",
        text(&o)
    );
}

#[test]
fn a_bad_signature_on_one_store_falls_over_to_a_good_one_and_keys_rotate() {
    require_fuse();
    let s = Scratch::new();
    let (old, old_pub) = keygen(&s, "old.key");
    let (new, new_pub) = keygen(&s, "new.key");
    let (evil, _) = keygen(&s, "evil.key");
    let st = vec![s.store("s1"), s.store("s2")];
    let good = src(&s, "good", "the real thing\n");
    assert_ok(&persist(
        &s,
        &st,
        "ws",
        "l",
        &good,
        &["--sign-key", old.to_str().unwrap()],
    ));
    // Store 1 (say a mirror anyone in PRs can write to) gets a forged layer.
    let forged = src(&s, "forged", "a forgery\n");
    assert_ok(&persist(
        &s,
        &st[..1],
        "ws",
        "l",
        &forged,
        &["--sign-key", evil.to_str().unwrap()],
    ));
    let mp = s.mkdir("mnt");
    let t = trust(&[old_pub.as_path(), new_pub.as_path()]);
    let tr: Vec<&str> = t.iter().map(|x| x.as_str()).collect();
    let m = mount(&s, &st, "ws", &["l"], &mp, &tr);
    assert_eq!(
        std::fs::read_to_string(mp.join("artifact")).unwrap(),
        "the real thing\n"
    );
    let stt = mount_status(&s, &mp);
    assert_eq!(stt.signature_failures, 1, "{stt:?}");
    drop(m);
    // Rotation: a layer signed by the new key mounts with both trusted; then the old key alone no
    // longer admits it.
    assert_ok(&persist(
        &s,
        &st,
        "ws",
        "l2",
        &good,
        &["--sign-key", new.to_str().unwrap()],
    ));
    drop(mount(&s, &st, "ws", &["l2"], &mp, &tr));
    let only_old = trust(&[old_pub.as_path()]);
    let oo: Vec<&str> = only_old.iter().map(|x| x.as_str()).collect();
    assert_code(&mount_cmd(&s, &st, "ws", &["l2"], &mp, &oo), 4);
    // trust_keys in the config file work like --trust-key (paths relative to the file).
    let cfg = s.path("wsfs.toml");
    std::fs::write(
        &cfg,
        format!(
            "trust_keys = [\"new.key.pub\"]\n[[store]]\nurl = {:?}\n",
            s.store("s2")
        ),
    )
    .unwrap();
    let o = s.wsfs(&[
        "mount",
        "--config",
        cfg.to_str().unwrap(),
        "--workspace",
        "ws",
        "--layer",
        "l2",
        mp.to_str().unwrap(),
    ]);
    assert_ok(&o);
    let _m = Mounted {
        mountpoint: mp.clone(),
        run_dir: s.run_dir(),
    };
    assert_eq!(
        std::fs::read_to_string(mp.join("artifact")).unwrap(),
        "the real thing\n"
    );
}

#[test]
fn signed_layers_on_s3() {
    require_fuse();
    let e = env();
    let s = Scratch::new();
    let (k, k_pub) = keygen(&s, "ci.key");
    let (evil, _) = keygen(&s, "evil.key");
    let b = unique("sig");
    mk_s3(&e, &b);
    let st = vec![format!("s3://{b}/p")];
    let good = src(&s, "good", "signed on s3\n");
    assert_ok(&persist(
        &s,
        &st,
        "ws",
        "l",
        &good,
        &["--sign-key", k.to_str().unwrap()],
    ));
    let mp = s.mkdir("mnt");
    let t = trust(&[k_pub.as_path()]);
    let tr: Vec<&str> = t.iter().map(|x| x.as_str()).collect();
    drop(mount(&s, &st, "ws", &["l"], &mp, &tr));
    assert_ok(&persist(
        &s,
        &st,
        "ws",
        "l",
        &good,
        &["--sign-key", evil.to_str().unwrap()],
    ));
    assert_code(&mount_cmd(&s, &st, "ws", &["l"], &mp, &tr), 4);
    // Key files: a readable secret key and a non-key are usage errors.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_code(
        &persist(
            &s,
            &st,
            "ws",
            "l",
            &good,
            &["--sign-key", k.to_str().unwrap()],
        ),
        2,
    );
    let bogus = s.path("bogus.pub");
    std::fs::write(&bogus, "not a key").unwrap();
    assert_code(
        &mount_cmd(
            &s,
            &st,
            "ws",
            &["l"],
            &mp,
            &["--trust-key", bogus.to_str().unwrap()],
        ),
        2,
    );
}
