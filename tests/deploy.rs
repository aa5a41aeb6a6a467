//! What an operator installs, checked the way its consumers read it: the
//! Kubernetes manifests against the Kubernetes API schema
//! (`kubernetes-validate --strict`, which rejects an unknown field), the
//! configs they and the Debian package carry against the agent's own config
//! types, the systemd unit with `systemd-analyze verify`, and the config
//! reference against `arbor config reference`.
//!
//! `tools/test.sh` (through `tools/setup.sh --test`) provides
//! kubernetes-validate and systemd-analyze; without them these tests fail,
//! they do not skip.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes release the manifests must be valid for.
const KUBERNETES_VERSION: &str = "1.37.0";

/// The checkout under test. Read when the test runs (cargo sets it), not
/// when it was built: a target directory shared between clones may hold a
/// binary built from another one.
fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// kubernetes-validate: `ARBOR_KUBERNETES_VALIDATE`, else the virtualenv
/// tools/setup.sh makes.
fn validator() -> PathBuf {
    let path = std::env::var_os("ARBOR_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/arbor/venv-k8s/bin/kubernetes-validate"));
    assert!(
        path.is_file(),
        "kubernetes-validate not found at {} (tools/setup.sh --test installs it)",
        path.display()
    );
    path
}

fn manifests() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Runs kubernetes-validate in strict mode; (exit success, its output).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(validator())
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_kubernetes_manifest_is_valid_for_the_kubernetes_api() {
    let files = manifests();
    let kinds = [
        "statefulset/arbor-agent",
        "service/arbor-agent",
        "configmap/arbor-agent",
        "secret/arbor-agent",
        "networkpolicy/arbor-agent",
        "poddisruptionbudget/arbor-agent",
    ];
    let (ok, text) = validate(&files);
    assert!(ok, "kubernetes-validate refused a manifest:\n{text}");
    for kind in kinds {
        assert!(
            text.contains(&format!("passed for resource {kind} ")),
            "{kind} was not validated:\n{text}"
        );
    }
}

#[test]
fn a_misspelt_manifest_field_is_refused() {
    let dir = tempfile::TempDir::new().unwrap();
    let original =
        std::fs::read_to_string(repo().join("deploy/kubernetes/statefulset.yaml")).unwrap();
    for (right, wrong) in [
        ("readOnlyRootFilesystem", "readOnlyRootFilesytem"),
        ("volumeClaimTemplates", "volumeClaimTemplate"),
        ("livenessProbe", "livenesProbe"),
    ] {
        assert!(original.contains(right), "{right}");
        let bad = dir.path().join("statefulset.yaml");
        std::fs::write(&bad, original.replacen(right, wrong, 1)).unwrap();
        let (ok, text) = validate(&[bad]);
        assert!(!ok, "{wrong} was accepted:\n{text}");
        assert!(text.contains(wrong), "the error names {wrong}:\n{text}");
    }
}

/// The `agent.toml` of the ConfigMap, read with the validator's PyYAML.
fn configmap_agent_toml() -> String {
    let python = validator().with_file_name("python");
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['data']['agent.toml'])",
        ])
        .arg(repo().join("deploy/kubernetes/configmap.yaml"))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn parse_config(text: &str, what: &str) -> arbor_agent::config::ConfigFile {
    toml::from_str(text).unwrap_or_else(|e| panic!("{what} is not an arbor config: {e}"))
}

#[test]
fn the_shipped_configs_are_arbor_configs() {
    let k8s = parse_config(&configmap_agent_toml(), "the ConfigMap's agent.toml");
    assert_eq!(k8s.agent.health_listen.as_deref(), Some("0.0.0.0:7402"));
    assert!(k8s.agent.tls.is_some() && k8s.agent.auth.is_some());
    assert_eq!(k8s.datasets.len(), 1);

    let deb = std::fs::read_to_string(repo().join("deploy/debian/agent.toml")).unwrap();
    let deb = parse_config(&deb, "deploy/debian/agent.toml");
    assert_eq!(deb.agent.listen, "127.0.0.1:7401");
    assert_eq!(deb.agent.data_dir, Path::new("/var/lib/arbor"));
    assert!(!deb.datasets[0].allow_repairs && !deb.datasets[0].serve_values);

    // The parse is strict: a misspelt field is an error, so the checks above
    // would catch one.
    let bad = std::fs::read_to_string(repo().join("deploy/debian/agent.toml"))
        .unwrap()
        .replacen("data_dir", "datadir", 1);
    let err = toml::from_str::<arbor_agent::config::ConfigFile>(&bad).unwrap_err();
    assert!(err.to_string().contains("datadir"), "{err}");
}

#[test]
fn the_systemd_unit_verifies() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("systemd-analyze (tools/setup.sh --test installs systemd)");
    let unit = std::fs::read_to_string(repo().join("deploy/debian/arbor-agent.service")).unwrap();
    for needle in [
        "User=arbor",
        "StateDirectory=arbor",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.contains(needle), "the unit lacks {needle}");
    }
    // verify checks that ExecStart's program exists: point it at this build.
    let dir = tempfile::TempDir::new().unwrap();
    let copy = dir.path().join("arbor-agent.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/bin/arbor ",
            &format!("{} ", env!("CARGO_BIN_EXE_arbor")),
        ),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on an unknown key and only warns: any line is a failure.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );

    let misspelt = dir.path().join("bad").join("arbor-agent.service");
    std::fs::create_dir_all(misspelt.parent().unwrap()).unwrap();
    std::fs::write(
        &misspelt,
        std::fs::read_to_string(&copy)
            .unwrap()
            .replace("ProtectSystem=", "ProtectSytem="),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&misspelt)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ProtectSytem"),
        "a misspelt key goes unnoticed"
    );
}

#[test]
fn docs_config_md_is_what_arbor_config_reference_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .args(["config", "reference"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(repo().join("docs/config.md")).unwrap_or_default();
    assert!(
        printed == committed,
        "docs/config.md is stale: run `arbor config reference > docs/config.md`"
    );
}

#[test]
fn arbor_version_names_its_commit_and_profile() {
    let out = Command::new(env!("CARGO_BIN_EXE_arbor"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let expected = format!(
        "arbor {} (commit {}, {})",
        env!("CARGO_PKG_VERSION"),
        arbor::build::COMMIT,
        arbor::build::PROFILE
    );
    assert_eq!(line.trim(), expected);
    assert!(
        ["debug", "release"].contains(&arbor::build::PROFILE),
        "{line}"
    );
    // In a checkout (CI, the scripts) the commit is known.
    if repo().join(".git").exists() {
        assert!(
            arbor::build::COMMIT.len() == 12
                && arbor::build::COMMIT.chars().all(|c| c.is_ascii_hexdigit()),
            "{line}"
        );
    }
}
