//! `sealpost-broker check-config FILE` as an operator runs it before a start or a reload: a good file is
//! `ok`; a missing certificate, a broken ACL, a plain metrics endpoint beyond loopback or an unreadable
//! audit key is one line saying what, exit 1; the data folder is never opened.
#![cfg(feature = "dev")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn check(config: &Path) -> (i32, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_sealpost-broker")).arg("check-config").arg(config).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn a_good_configuration_is_ok_and_each_broken_part_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let setup = sealpost_broker::dev::prepare(&dir, "127.0.0.1:7443".parse().unwrap()).unwrap();
    let config = setup.config;
    // As if a broker ran on the folder: the store is open (and locked) here while the check runs.
    let running = sealpost_broker::store::DiskStore::open(&dir.join("data")).unwrap();
    let (code, stdout, stderr) = check(&config);
    assert_eq!((code, stdout.trim_end()), (0, format!("{}: ok", config.display()).as_str()), "{stderr}");
    drop(running);

    let original = std::fs::read_to_string(&config).unwrap();
    let broken = |edit: &dyn Fn(&str) -> String, side: &dyn Fn(), expect: &str| {
        std::fs::write(&config, edit(&original)).unwrap();
        side();
        let (code, stdout, stderr) = check(&config);
        assert_eq!(code, 1, "{stdout}{stderr}");
        assert!(stderr.contains(expect), "expected {expect:?} in {stderr:?}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        std::fs::write(&config, &original).unwrap();
    };
    let nothing = || {};
    broken(&|t| t.replace("pki/server.pem", "pki/missing.pem"), &nothing, "tls.cert");
    broken(
        &|t| t.replace("[metrics]\nlisten = \"127.0.0.1:9464\"", "[metrics]\nlisten = \"0.0.0.0:9464\""),
        &nothing,
        "metrics",
    );
    broken(&|t| format!("{t}\nunknown_key = 1\n"), &nothing, "unknown");
    let acl = dir.join("acl.toml");
    let acl_text = std::fs::read_to_string(&acl).unwrap();
    broken(
        &|t| t.to_owned(),
        &|| std::fs::write(&acl, acl_text.replace("\"subscribe\"]", "\"read\"]")).unwrap(),
        "read",
    );
    std::fs::write(&acl, &acl_text).unwrap();
    broken(&|t| t.replace("key = \"audit.key\"", "key = \"no-such.key\""), &nothing, "no-such.key");
}
