//! Tests of loading and checking the configuration, and of the README's table.

use std::path::PathBuf;

use super::load::parse_serve;
use super::settings::settings;
use super::*;
use crate::mode::LoggingMode;
use crate::sink::SinkTarget;

#[test]
fn the_defaults_are_valid() {
    Config::default().validate().unwrap();
    assert_eq!(
        Config::default().sink_target(),
        SinkTarget::File(PathBuf::from("./sidelog-data/out"))
    );
}

#[test]
fn a_file_sets_keys_and_flags_override_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidelog.toml");
    std::fs::write(
        &path,
        "mode = \"rbml\"\nsink = \"http://127.0.0.1:9\"\n[delivery]\nlanes = 3\nlinger_ms = 7\n",
    )
    .unwrap();
    let path_arg = path.display().to_string();
    let args = parse_serve(&[
        "--config",
        &path_arg,
        "--mode",
        "sbml",
        "--delivery-lanes",
        "5",
    ])
    .unwrap();
    let c = Config::load(args).unwrap();
    assert_eq!(c.mode, LoggingMode::SenderBased);
    assert_eq!(c.delivery.lanes, 5, "the flag wins over the file");
    assert_eq!(c.delivery.linger_ms, 7, "the file wins over the default");
    assert_eq!(
        c.delivery.batch_max_messages, 1024,
        "the default fills the rest"
    );
    assert_eq!(
        c.sink_target(),
        SinkTarget::Grpc("http://127.0.0.1:9".into())
    );
}

#[test]
fn errors_name_the_key_and_its_flag() {
    let err = Config::load(ServeArgs::default().set("delivery.lanes", "0"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("delivery.lanes") && err.contains("--delivery-lanes"),
        "{err}"
    );
    assert!(
        err.contains("SIDELOG_DELIVERY_LANES") && err.contains("1 – 1024"),
        "{err}"
    );
    let err = Config::load(ServeArgs::default().set("sink", "ftp://x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sink"), "{err}");
    for scheme in ["http://", "file:", "nats://", "s3://"] {
        assert!(err.contains(scheme), "a bad sink lists every kind: {err}");
    }
    let err = Config::load(ServeArgs::default().set("listen", "localhost:50071"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--listen") && err.contains("for localhost write 127.0.0.1"),
        "{err}"
    );
    let missing = dir_missing_config();
    assert_eq!(
        missing.matches("No such file").count(),
        1,
        "the OS error once: {missing}"
    );
    let err = Config::load(ServeArgs::default().set("sink", "s3://Bad_Bucket/x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sink") && err.contains("bucket"), "{err}");
    let err = Config::load(ServeArgs::default().set("mode", "fast"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("mode") && err.contains("--mode"), "{err}");
    let err = Config::load(ServeArgs::default().set("limits.max_journal_bytes", "5"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("0 (off) or ≥ 1 MiB"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "lanes = 3\n").unwrap();
    let err = Config::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("bad.toml") && err.contains("lanes"), "{err}");
}

/// A setting whose 0 means off takes "off" too, from a flag and from a file; one that has no
/// off does not.
#[test]
fn off_is_zero_where_zero_means_off() {
    let config = Config::load(ServeArgs::default().set("journal.wal_bytes", "off")).unwrap();
    assert_eq!(config.journal.wal_bytes, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("off.toml");
    std::fs::write(&path, "[delivery]\nmax_attempts = \"OFF\"\n").unwrap();
    assert_eq!(Config::from_file(&path).unwrap().delivery.max_attempts, 0);
    let err = Config::load(ServeArgs::default().set("delivery.lanes", "off"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("delivery.lanes"), "{err}");
}

#[test]
fn every_setting_has_a_flag_a_variable_and_a_doc() {
    let all = settings();
    let mut keys: Vec<&str> = all.iter().map(|s| s.key).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), all.len(), "a key is declared twice");
    for s in &all {
        assert!(!s.doc.is_empty(), "{} has no doc", s.key);
        let value = if s.value_name == "N" { "1" } else { "x" };
        let flag = format!("--{}", s.flag());
        let args = parse_serve(&[&flag, value]).unwrap_or_else(|e| panic!("{flag}: {e}"));
        assert_eq!(args.given.len(), 1, "{flag}");
        assert_eq!(args.given[0].key, s.key);
    }
}

/// The configuration table of docs/configuration.md is rendered from the declarations; this
/// fails when the two disagree, and prints the table to paste.
#[test]
fn the_docs_list_every_setting_as_declared() {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .expect("read docs/configuration.md");
    let (start, end) = ("<!-- config-table:begin -->\n", "<!-- config-table:end -->");
    let table = readme
        .split_once(start)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(table, _)| table)
        .expect("docs/configuration.md has the config-table markers");
    let want = markdown_table();
    assert!(
        table == want,
        "docs/configuration.md's configuration table differs from src/config/settings.rs; it should read:\n{want}"
    );
}

/// The error of a `--config` file that does not exist, with its causes, as the CLI prints it.
fn dir_missing_config() -> String {
    let dir = tempfile::tempdir().unwrap();
    let err = Config::from_file(&dir.path().join("nope.toml")).unwrap_err();
    format!("{:#}", anyhow::Error::from(err))
}

/// The ports the docs show (the defaults of `listen` and `admin_listen`, and the metrics
/// example of docs/operating.md) are the ones the Dockerfile exposes and the Kubernetes example listens on and
/// probes.
#[test]
fn the_deploy_files_use_the_documented_ports_and_probes() {
    let readme = include_str!("../../docs/operating.md");
    let dockerfile = include_str!("../../deploy/container/Dockerfile");
    let manifest = include_str!("../../deploy/kubernetes/ingest-with-sidelog.yaml");
    let defaults = Config::default();
    let admin: std::net::SocketAddr = defaults.admin_listen.parse().expect("a default address");
    let metrics = readme
        .split("`--metrics-listen 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .expect("docs/operating.md's Metrics section shows --metrics-listen with a port");
    let expose = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("the Dockerfile exposes its ports");
    assert_eq!(
        expose,
        format!("{} {} {metrics}", defaults.listen.port(), admin.port())
    );
    assert!(
        manifest.contains(&format!("metrics_listen = \"0.0.0.0:{metrics}\"")),
        "the manifest's metrics_listen"
    );
    assert!(manifest.contains(&format!("containerPort: {metrics}")));
    assert!(manifest.contains(&format!(
        "listen = \"127.0.0.1:{}\"",
        defaults.listen.port()
    )));
    for probe in ["path: /readyz", "path: /healthz"] {
        assert!(manifest.contains(probe), "{probe}");
    }
}

/// `deploy/sidelog.toml` is the example rendered from the declarations (every setting, its doc
/// and default), and uncommented whole it is a configuration that loads to the defaults.
#[test]
fn the_example_config_lists_every_setting_with_its_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sidelog.toml");
    let file = std::fs::read_to_string(path).unwrap_or_default();
    let want = super::example_toml();
    if file != want {
        // Written for the next run and for review; the test fails all the same.
        let _ = std::fs::write(path, &want);
        panic!(
            "deploy/sidelog.toml differed from src/config/settings.rs: rewritten, review and commit it"
        );
    }
    for s in settings() {
        let name = s.key.rsplit('.').next().unwrap();
        assert!(
            file.contains(&format!("#{name} = ")) || file.contains("# Not set by default"),
            "{} missing",
            s.key
        );
    }
    let uncommented: String = file
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.starts_with(' ') && rest.contains(" = ") => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("sidelog.toml");
    std::fs::write(&toml, uncommented).unwrap();
    let loaded = Config::from_file(&toml).unwrap();
    loaded.validate().unwrap();
    // Only the sink differs in form: not set means the file sink in the data directory,
    // which the example says explicitly.
    let defaults = Config {
        sink: Some(
            "file:./sidelog-data/out"
                .to_owned()
                .try_into()
                .expect("a file sink URL"),
        ),
        ..Config::default()
    };
    assert_eq!(loaded, defaults);
}
