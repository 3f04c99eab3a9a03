//! The deployment files checked for what production depends on: `Dockerfile`, `.dockerignore`,
//! `deploy/compose.yaml` with `deploy/compose.config.toml`, and the kustomize base in
//! `deploy/kubernetes/`. Every YAML file under `deploy/` is parsed; the two configurations are
//! validated by the real binary (`lease-sync check-config`) with stand-in secret files.
//!
//! The workspace's `Cargo.toml` is checked for what the image build needs (every member in the
//! build context) and for the one dependency rule the manifest cannot express: the `lease_sync`
//! library never uses the OpenApp sandbox crate, which only the binary links.
//!
//! No Docker, kubectl or cluster is needed: these are static checks. The linters
//! (hadolint, docker compose config, kubectl kustomize, kubernetes-validate, yamllint) are in
//! `deploy/lint.sh`; docs/DEPLOY.md has their results.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lease_sync::config::Settings;
use serde::Deserialize as _;
use serde_norway::Value;

/// The lease-sync image, without its tag; the tag is the crate's version.
const IMAGE_REPOSITORY: &str = "ghcr.io/lease-sync/lease-sync";
/// The uid and gid every lease-sync container runs as.
const APP_UID: u64 = 10001;
/// Where every lease-sync container finds its configuration.
const CONFIG_PATH: &str = "/etc/lease-sync/config.toml";
/// Text that only a secret contains: webhook secrets, admin token hashes and tokens, OpenApp
/// keys (`{base_url}_openapp_{secret}`).
const SECRET_MARKERS: &[&str] = &["whsec_", "sha256:", "_openapp_", "lsat_"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn image() -> String {
    format!("{IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// Whether `value` looks like it holds a secret: a known secret prefix, or a URL with a
/// password (`redis://:pw@host`).
fn looks_secret(value: &str) -> bool {
    SECRET_MARKERS.iter().any(|m| value.contains(m))
        || value
            .split_once("://")
            .is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@'))
}

// ---------------------------------------------------------------------------------------------
// YAML

/// Every document of a YAML file, with `<<` merge keys applied; empty documents dropped.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            let mut value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
            value
        })
        .filter(|value| !value.is_null())
        .collect()
}

/// YAML files under `dir`, recursively, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {value:?}"))
}

fn list<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: expected a list, found {value:?}"))
}

fn strings(value: &Value, what: &str) -> Vec<String> {
    list(value, what)
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("{what}: expected strings, found {other:?}"),
        })
        .collect()
}

/// A string-to-string mapping (labels, selectors, annotations, compose `environment`).
fn string_map(value: &Value, what: &str) -> BTreeMap<String, String> {
    match value {
        Value::Null => BTreeMap::new(),
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => panic!("{what}: expected a scalar, found {other:?}"),
                };
                (text(k, what).to_owned(), value)
            })
            .collect(),
        // compose's list form: ["KEY=value", …]
        Value::Sequence(_) => strings(value, what)
            .into_iter()
            .map(|entry| {
                let (k, v) = entry
                    .split_once('=')
                    .unwrap_or_else(|| panic!("{what}: `{entry}` is not KEY=value"));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => panic!("{what}: expected a mapping, found {other:?}"),
    }
}

fn uint(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: expected a number, found {value:?}"))
}

// ---------------------------------------------------------------------------------------------
// Configurations and check-config

/// The port of a `HOST:PORT` listen address.
fn port_of(listen: &str) -> u64 {
    listen
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("`{listen}` has no port"))
}

/// Parses a configuration with `env` as overrides (no files read, nothing validated).
fn settings(toml: &str, env: &BTreeMap<String, String>) -> Settings {
    Settings::from_toml_str(toml, env.clone()).unwrap_or_else(|e| panic!("config: {e}"))
}

/// The longest time a lease-sync process may take to stop after SIGTERM.
fn longest_shutdown(settings: &Settings) -> Duration {
    settings
        .http
        .shutdown_grace
        .max(settings.worker.shutdown_timeout)
}

/// Checks that a configuration holds no secret itself: every secret comes from a file under
/// `secrets_dir`, the redis URL carries no password.
fn assert_secrets_by_reference(settings: &Settings, secrets_dir: &str, what: &str) {
    assert!(
        settings.openapp.api_key.is_none(),
        "{what}: openapp.api_key is set inline; use api_key_file"
    );
    assert!(
        settings.admin.tokens.is_empty(),
        "{what}: admin.tokens are inline; use tokens_file"
    );
    for source in &settings.sources {
        assert!(
            source.secrets.is_empty(),
            "{what}: source {} has inline secrets; use secrets_file",
            source.name
        );
    }
    assert!(
        !looks_secret(settings.redis.url.expose()),
        "{what}: redis.url carries a password; give it through a Secret"
    );
    let files = secret_files(settings);
    assert!(
        files.len() >= 3,
        "{what}: expected the OpenApp key, webhook secrets and admin tokens from files, found {files:?}"
    );
    for (variable, (path, _)) in &files {
        assert!(
            path.starts_with(secrets_dir),
            "{what}: {variable} = {path} is not under {secrets_dir}"
        );
    }
}

/// The secret files a configuration reads: the override variable that points at each, with
/// its path and stand-in content of the right form.
fn secret_files(settings: &Settings) -> BTreeMap<String, (String, String)> {
    let path = |p: &Path| p.to_str().expect("UTF-8 path").to_owned();
    let mut out = BTreeMap::new();
    if let Some(file) = &settings.openapp.api_key_file {
        out.insert(
            "LEASE_SYNC__OPENAPP__API_KEY_FILE".to_owned(),
            (path(file), "stand-in-openapp-key\n".to_owned()),
        );
    }
    if let Some(file) = &settings.admin.tokens_file {
        out.insert(
            "LEASE_SYNC__ADMIN__TOKENS_FILE".to_owned(),
            (path(file), format!("sha256:{}\n", "ab".repeat(32))),
        );
    }
    for (i, source) in settings.sources.iter().enumerate() {
        if let Some(file) = &source.secrets_file {
            // whsec_ + base64 of 24 bytes: the form standard-webhooks needs.
            out.insert(
                format!("LEASE_SYNC__SOURCES__{i}__SECRETS_FILE"),
                (
                    path(file),
                    "whsec_c3RhbmQtaW4gd2ViaG9vayBzZWNyZXQgZm9yIHQ=\n".to_owned(),
                ),
            );
        }
    }
    out
}

/// Runs `lease-sync check-config` on `config_path` with `env` (the deployment's variables),
/// every secret file replaced by a stand-in in a temporary directory; panics unless it exits 0.
fn check_config(config_path: &Path, env: &BTreeMap<String, String>, what: &str) {
    let toml = fs::read_to_string(config_path).expect("config");
    let parsed = settings(&toml, env);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_lease-sync"));
    command.arg("check-config").arg("--config").arg(config_path);
    for (variable, _) in std::env::vars().filter(|(k, _)| k.starts_with("LEASE_SYNC__")) {
        command.env_remove(variable);
    }
    command.envs(env);
    for (i, (variable, (_, content))) in secret_files(&parsed).into_iter().enumerate() {
        let stand_in = dir.path().join(format!("secret-{i}"));
        fs::write(&stand_in, content).expect("write stand-in secret");
        command.env(variable, stand_in);
    }
    let output = command.output().expect("run lease-sync check-config");
    assert!(
        output.status.success(),
        "{what}: lease-sync check-config failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is valid"),
        "{what}: unexpected check-config output:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Compose

fn compose() -> Value {
    let mut docs = yaml_documents(&repo().join("deploy/compose.yaml"));
    assert_eq!(docs.len(), 1, "compose.yaml is one document");
    docs.remove(0)
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(service.is_mapping(), "compose.yaml has no service `{name}`");
    service
}

/// Services running the lease-sync image.
fn lease_sync_services(compose: &Value) -> Vec<(String, &Value)> {
    compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .filter(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with(IMAGE_REPOSITORY))
        })
        .map(|(name, s)| (text(name, "service name").to_owned(), s))
        .collect()
}

/// A compose command as a list of arguments (exec form, or a string split on whitespace).
fn compose_command(service: &Value, what: &str) -> Vec<String> {
    match &service["command"] {
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        other => strings(other, what),
    }
}

/// The value following `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Variables of the ingest and worker services together: what a `serve` process would need.
fn compose_lease_sync_env(compose: &Value) -> BTreeMap<String, String> {
    ["ingest", "worker"]
        .iter()
        .flat_map(|name| string_map(&service(compose, name)["environment"], name))
        .collect()
}

#[test]
fn compose_runs_one_lease_sync_image_and_redis_pinned_to_a_major_version() {
    let compose = compose();
    let image = image();
    for name in ["ingest", "worker", "sandbox"] {
        assert_eq!(
            text(&service(&compose, name)["image"], name),
            image,
            "service {name} must run {image}"
        );
    }
    let build = &service(&compose, "ingest")["build"];
    let context = repo()
        .join("deploy")
        .join(text(&build["context"], "build.context"));
    let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
    assert_eq!(
        dockerfile
            .canonicalize()
            .expect("the build's Dockerfile exists"),
        repo()
            .join("Dockerfile")
            .canonicalize()
            .expect("Dockerfile"),
        "ingest must build the top-level Dockerfile"
    );
    let redis = text(&service(&compose, "redis")["image"], "redis.image");
    let tag = redis
        .strip_prefix("redis:")
        .unwrap_or_else(|| panic!("redis image `{redis}` is not redis:<major>"));
    assert!(
        tag.split('.')
            .next()
            .is_some_and(|major| !major.is_empty() && major.chars().all(|c| c.is_ascii_digit())),
        "redis image `{redis}` must be pinned to a major version"
    );
}

#[test]
fn compose_redis_is_durable_and_never_evicts() {
    let compose = compose();
    let redis = service(&compose, "redis");
    let args = compose_command(redis, "redis.command");
    for (flag, value) in [
        ("--appendonly", "yes"),
        ("--appendfsync", "always"),
        ("--maxmemory-policy", "noeviction"),
    ] {
        assert_eq!(
            flag_value(&args, flag),
            Some(value),
            "redis must run with {flag} {value}; command: {args:?}"
        );
    }
    assert!(
        flag_value(&args, "--maxmemory").is_some_and(|m| m != "0"),
        "redis needs a --maxmemory, so noeviction can refuse writes before the host runs out"
    );
    let volumes = strings(&redis["volumes"], "redis.volumes");
    assert!(
        volumes.iter().any(|v| v.ends_with(":/data")),
        "redis must keep /data (the append-only file) on a volume: {volumes:?}"
    );
}

#[test]
fn compose_services_have_healthchecks_and_lease_sync_waits_for_redis() {
    let compose = compose();
    for (name, service) in compose["services"].as_mapping().expect("services") {
        let name = text(name, "service");
        let test = strings(
            &service["healthcheck"]["test"],
            &format!("{name}.healthcheck"),
        );
        assert!(
            test.len() >= 2 && (test[0] == "CMD" || test[0] == "CMD-SHELL"),
            "service {name} needs a healthcheck, found {test:?}"
        );
    }
    let redis_test = strings(&service(&compose, "redis")["healthcheck"]["test"], "redis").join(" ");
    assert!(
        redis_test.contains("redis-cli") && redis_test.contains("ping"),
        "redis healthcheck must be redis-cli ping: {redis_test}"
    );
    for name in ["ingest", "worker"] {
        let service = service(&compose, name);
        let test = strings(&service["healthcheck"]["test"], name);
        assert_eq!(test[0], "CMD", "{name}: exec form (the image has no shell)");
        assert!(
            test[1].ends_with("lease-sync") && test[2] == "healthcheck",
            "{name}: the healthcheck must be `lease-sync healthcheck`: {test:?}"
        );
        assert_eq!(flag_value(&test, "--config"), Some(CONFIG_PATH), "{name}");
        assert_eq!(
            text(&service["depends_on"]["redis"]["condition"], name),
            "service_healthy",
            "{name} must wait for a healthy redis"
        );
    }
}

#[test]
fn compose_roles_commands_and_ports() {
    let compose = compose();
    for (name, role) in [("ingest", "ingest"), ("worker", "work")] {
        assert_eq!(
            compose_command(service(&compose, name), name),
            [role, "--config", CONFIG_PATH],
            "service {name}"
        );
    }
    let config = settings(
        &read("deploy/compose.config.toml"),
        &compose_lease_sync_env(&compose),
    );
    let webhook_port = port_of(&config.http.listen.to_string());
    let ingest_ports = strings(&service(&compose, "ingest")["ports"], "ingest.ports");
    assert!(
        ingest_ports
            .iter()
            .any(|p| p.ends_with(&format!(":{webhook_port}"))),
        "ingest must publish the webhook port {webhook_port}: {ingest_ports:?}"
    );
    assert!(
        service(&compose, "worker")["ports"].is_null(),
        "worker must publish no host port, so it can scale"
    );
    let sandbox = service(&compose, "sandbox");
    assert_eq!(
        strings(&sandbox["profiles"], "sandbox.profiles"),
        ["sandbox"],
        "the sandbox is optional"
    );
    assert_eq!(compose_command(sandbox, "sandbox")[0], "sandbox-openapp");
    // lease-sync reaches the sandbox on the port it listens on.
    let sandbox_port = port_of(
        flag_value(&compose_command(sandbox, "sandbox"), "--listen").expect("sandbox --listen"),
    );
    if config
        .openapp
        .base_url
        .as_str()
        .starts_with("http://sandbox:")
    {
        assert!(
            config
                .openapp
                .base_url
                .as_str()
                .starts_with(&format!("http://sandbox:{sandbox_port}/")),
            "openapp.base_url {} does not reach the sandbox on {sandbox_port}",
            config.openapp.base_url
        );
    }
}

#[test]
fn compose_runs_lease_sync_as_10001_read_only_without_capabilities() {
    // compose sets `user` explicitly (the image's USER is the same): checked here, not assumed.
    let compose = compose();
    let services = lease_sync_services(&compose);
    assert!(
        services.len() >= 3,
        "ingest, worker and sandbox run lease-sync"
    );
    for (name, service) in services {
        assert_eq!(
            service["user"].as_str(),
            Some(format!("{APP_UID}:{APP_UID}").as_str()),
            "service {name} must run as {APP_UID}:{APP_UID}"
        );
        assert_eq!(
            service["read_only"].as_bool(),
            Some(true),
            "{name}: read_only"
        );
        assert_eq!(
            strings(&service["cap_drop"], &name),
            ["ALL"],
            "{name}: cap_drop ALL"
        );
    }
}

#[test]
fn compose_secrets_are_files_mounted_by_reference() {
    let compose = compose();
    let top = compose["secrets"].as_mapping().expect("top-level secrets");
    for (name, secret) in top {
        let name = text(name, "secret");
        let file = text(&secret["file"], name);
        assert!(
            file.starts_with("./secrets/"),
            "secret {name} must be a file under deploy/secrets/, found {file}"
        );
    }
    let gitignore = read(".gitignore");
    assert!(
        gitignore.lines().any(|l| l.trim() == "/deploy/secrets/*"),
        "deploy/secrets/ must be git-ignored"
    );
    let config_text = read("deploy/compose.config.toml");
    for (name, service) in lease_sync_services(&compose) {
        let env = string_map(&service["environment"], &name);
        for (variable, value) in &env {
            assert!(
                !looks_secret(value),
                "{name}: {variable} holds a secret; mount it as a compose secret"
            );
        }
        if name == "sandbox" {
            continue;
        }
        let mounted: BTreeSet<String> = strings(&service["secrets"], &name).into_iter().collect();
        for secret in &mounted {
            assert!(
                top.contains_key(secret.as_str()),
                "{name}: unknown secret {secret}"
            );
        }
        // Every secret file this service's process reads is one it mounts.
        let config = settings(&config_text, &env);
        let files = secret_files(&config);
        assert!(!files.is_empty(), "{name} reads no secret file");
        for (variable, (path, _)) in files {
            let secret = path
                .strip_prefix("/run/secrets/")
                .unwrap_or_else(|| panic!("{name}: {variable} = {path} is not a compose secret"));
            assert!(
                mounted.contains(secret),
                "{name} reads {path} but does not mount secret {secret}"
            );
        }
    }
    // Least privilege: the internet-facing ingest never holds the OpenApp key.
    assert!(
        !strings(&service(&compose, "ingest")["secrets"], "ingest")
            .contains(&"openapp_api_key".to_owned()),
        "ingest must not mount the OpenApp API key"
    );
}

#[test]
fn compose_stop_grace_period_covers_lease_sync_shutdown() {
    let compose = compose();
    let config = settings(
        &read("deploy/compose.config.toml"),
        &compose_lease_sync_env(&compose),
    );
    for name in ["ingest", "worker"] {
        let grace =
            humantime::parse_duration(text(&service(&compose, name)["stop_grace_period"], name))
                .expect("stop_grace_period");
        assert!(
            grace > longest_shutdown(&config),
            "{name}: stop_grace_period {grace:?} must exceed the shutdown grace {:?}",
            longest_shutdown(&config)
        );
    }
}

#[test]
fn compose_config_validates_with_check_config() {
    let compose = compose();
    let env = compose_lease_sync_env(&compose);
    let config = settings(&read("deploy/compose.config.toml"), &env);
    assert_secrets_by_reference(&config, "/run/secrets/", "compose.config.toml");
    assert_eq!(config.redis.url.expose(), "redis://redis:6379");
    assert_eq!(config.admin.listen.to_string(), "0.0.0.0:9090");
    check_config(
        &repo().join("deploy/compose.config.toml"),
        &env,
        "deploy/compose.config.toml",
    );
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// Every document under deploy/kubernetes except the kustomization.
fn kubernetes() -> Vec<Value> {
    yaml_files(&repo().join("deploy/kubernetes"))
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .flat_map(|p| yaml_documents(p))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(docs, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} named {name} in deploy/kubernetes"))
}

/// The Deployments and the role (`ingest` or `work`) their lease-sync container runs.
fn deployments(docs: &[Value]) -> Vec<(String, &Value)> {
    let out: Vec<_> = of_kind(docs, "Deployment")
        .into_iter()
        .map(|d| {
            let name = text(&d["metadata"]["name"], "Deployment name").to_owned();
            (name, d)
        })
        .collect();
    assert!(out.len() >= 2, "expected the ingest and worker Deployments");
    out
}

fn containers<'a>(deployment: &'a Value, what: &str) -> &'a [Value] {
    list(&deployment["spec"]["template"]["spec"]["containers"], what)
}

fn lease_sync_containers<'a>(deployment: &'a Value, what: &str) -> Vec<&'a Value> {
    let out: Vec<_> = containers(deployment, what)
        .iter()
        .filter(|c| {
            c["image"]
                .as_str()
                .is_some_and(|i| i.starts_with(IMAGE_REPOSITORY))
        })
        .collect();
    assert!(!out.is_empty(), "{what} runs no lease-sync container");
    out
}

/// The role a lease-sync container runs (`ingest`, `work`, `serve`).
fn role(container: &Value, what: &str) -> String {
    let args = strings(&container["args"], &format!("{what}.args"));
    assert_eq!(
        args[1..],
        ["--config", CONFIG_PATH],
        "{what}: args must be [ROLE, --config, {CONFIG_PATH}]"
    );
    args[0].clone()
}

/// The ingest Deployment: the one whose container runs `ingest`.
fn ingest_deployment(docs: &[Value]) -> &Value {
    deployments(docs)
        .into_iter()
        .find(|(name, d)| {
            lease_sync_containers(d, name)
                .iter()
                .any(|c| role(c, name) == "ingest")
        })
        .map(|(_, d)| d)
        .expect("a Deployment running `lease-sync ingest`")
}

fn pod_labels(deployment: &Value) -> BTreeMap<String, String> {
    string_map(
        &deployment["spec"]["template"]["metadata"]["labels"],
        "pod labels",
    )
}

/// Whether a `matchLabels`-style selector selects pods with `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The container port a probe's `port` (a number or a port name) points at, if declared.
fn resolve_port(container: &Value, port: &Value) -> Option<u64> {
    let ports = container["ports"].as_sequence()?;
    ports
        .iter()
        .find(|p| match port {
            Value::Number(n) => p["containerPort"].as_u64() == n.as_u64(),
            Value::String(name) => p["name"].as_str() == Some(name.as_str()),
            _ => false,
        })
        .and_then(|p| p["containerPort"].as_u64())
}

/// The lease-sync configuration in the ConfigMap, as text.
fn configmap_config(docs: &[Value]) -> String {
    text(
        &named(docs, "ConfigMap", "lease-sync-config")["data"]["config.toml"],
        "ConfigMap lease-sync-config data.config.toml",
    )
    .to_owned()
}

/// Plain `value` variables of every lease-sync container: what a `serve` process would need.
fn kubernetes_lease_sync_env(docs: &[Value]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (name, deployment) in deployments(docs) {
        for container in lease_sync_containers(deployment, &name) {
            for var in container["env"].as_sequence().into_iter().flatten() {
                if let Some(value) = var["value"].as_str() {
                    env.insert(text(&var["name"], &name).to_owned(), value.to_owned());
                }
            }
        }
    }
    env
}

fn kubernetes_settings(docs: &[Value]) -> Settings {
    settings(&configmap_config(docs), &kubernetes_lease_sync_env(docs))
}

#[test]
fn kustomization_lists_exactly_the_files_present() {
    let dir = repo().join("deploy/kubernetes");
    let kustomization = yaml_documents(&dir.join("kustomization.yaml")).remove(0);
    assert_eq!(
        kustomization["kind"].as_str(),
        Some("Kustomization"),
        "deploy/kubernetes/kustomization.yaml"
    );
    let listed: BTreeSet<String> = strings(&kustomization["resources"], "resources")
        .into_iter()
        .collect();
    for resource in &listed {
        assert!(
            dir.join(resource).is_file(),
            "kustomization lists {resource}, which does not exist"
        );
    }
    let present: BTreeSet<String> = yaml_files(&dir)
        .iter()
        .map(|p| {
            p.strip_prefix(&dir)
                .expect("under dir")
                .to_str()
                .expect("UTF-8")
                .to_owned()
        })
        .filter(|p| p != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization resources vs files present");
}

#[test]
fn kubernetes_base_holds_no_secret_values() {
    let docs = kubernetes();
    for secret in of_kind(&docs, "Secret") {
        assert!(
            secret["data"].is_null() && secret["stringData"].is_null(),
            "the base must not contain a Secret with data: {:?}",
            secret["metadata"]["name"]
        );
    }
    for (name, deployment) in deployments(&docs) {
        for container in containers(deployment, &name) {
            for var in container["env"].as_sequence().into_iter().flatten() {
                let variable = text(&var["name"], &name);
                if let Some(value) = var["value"].as_str() {
                    assert!(
                        !looks_secret(value),
                        "{name}: env {variable} holds a secret; use secretKeyRef or a file"
                    );
                } else {
                    assert!(
                        !var["valueFrom"]["secretKeyRef"]["name"].is_null()
                            || !var["valueFrom"]["configMapKeyRef"]["name"].is_null()
                            || !var["valueFrom"]["fieldRef"].is_null(),
                        "{name}: env {variable} has neither a value nor a reference"
                    );
                }
            }
        }
    }
    assert_secrets_by_reference(
        &kubernetes_settings(&docs),
        "/run/secrets/",
        "ConfigMap config.toml",
    );
}

#[test]
fn kubernetes_secret_files_come_from_mounted_secret_volumes() {
    let docs = kubernetes();
    let toml = configmap_config(&docs);
    for (name, deployment) in deployments(&docs) {
        let pod = &deployment["spec"]["template"]["spec"];
        let volumes = list(&pod["volumes"], &format!("{name}.volumes"));
        for container in lease_sync_containers(deployment, &name) {
            let env: BTreeMap<String, String> = container["env"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|v| {
                    Some((
                        v["name"].as_str()?.to_owned(),
                        v["value"].as_str()?.to_owned(),
                    ))
                })
                .collect();
            let mounts = list(&container["volumeMounts"], &name);
            let config = settings(&toml, &env);
            let files = secret_files(&config);
            assert!(!files.is_empty(), "{name} reads no secret file");
            for (variable, (path, _)) in files {
                let (dir, file) = path.rsplit_once('/').expect("absolute path");
                let mount = mounts
                    .iter()
                    .find(|m| m["mountPath"].as_str() == Some(dir))
                    .unwrap_or_else(|| panic!("{name}: nothing mounted at {dir} for {variable}"));
                let volume = volumes
                    .iter()
                    .find(|v| v["name"] == mount["name"])
                    .unwrap_or_else(|| panic!("{name}: no volume {:?}", mount["name"]));
                assert!(
                    volume["secret"]["secretName"].is_string(),
                    "{name}: {path} must come from a Secret volume"
                );
                let items = volume["secret"]["items"].as_sequence();
                assert!(
                    items
                        .is_none_or(|items| items.iter().any(|i| i["path"].as_str() == Some(file))),
                    "{name}: the Secret volume does not project {file} ({variable})"
                );
            }
            let config_mount = mounts
                .iter()
                .find(|m| CONFIG_PATH.starts_with(&format!("{}/", text(&m["mountPath"], &name))))
                .unwrap_or_else(|| panic!("{name}: nothing mounted at {CONFIG_PATH}"));
            let config_volume = volumes
                .iter()
                .find(|v| v["name"] == config_mount["name"])
                .expect("config volume");
            assert_eq!(
                config_volume["configMap"]["name"].as_str(),
                Some("lease-sync-config"),
                "{name}: {CONFIG_PATH} comes from the ConfigMap"
            );
        }
    }
    // Least privilege: the internet-facing ingest never holds the OpenApp key.
    let ingest = ingest_deployment(&docs);
    for volume in list(
        &ingest["spec"]["template"]["spec"]["volumes"],
        "ingest volumes",
    ) {
        if let Some(items) = volume["secret"]["items"].as_sequence() {
            assert!(
                items
                    .iter()
                    .all(|i| i["key"].as_str() != Some("openapp_api_key")),
                "ingest must not mount the OpenApp API key"
            );
        } else {
            assert!(
                volume["secret"].is_null(),
                "ingest mounts a whole Secret; project only the keys it needs"
            );
        }
    }
}

#[test]
fn kubernetes_images_are_one_lease_sync_image() {
    let docs = kubernetes();
    let image = image();
    for (name, deployment) in deployments(&docs) {
        for container in containers(deployment, &name) {
            assert_eq!(
                text(&container["image"], &name),
                image,
                "{name} must run {image} (the same image as compose)"
            );
        }
    }
}

#[test]
fn kubernetes_probes_hit_healthz_and_readyz_on_declared_ports() {
    let docs = kubernetes();
    let config = kubernetes_settings(&docs);
    let webhook_port = port_of(&config.http.listen.to_string());
    let admin_port = port_of(&config.admin.listen.to_string());
    assert!(
        config.admin.listen.to_string().starts_with("0.0.0.0:"),
        "admin.listen must be 0.0.0.0 so probes and Prometheus reach it"
    );
    for (name, deployment) in deployments(&docs) {
        for container in lease_sync_containers(deployment, &name) {
            let role = role(container, &name);
            let allowed: &[u64] = match role.as_str() {
                "work" => &[admin_port],
                _ => &[webhook_port, admin_port],
            };
            for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
                let get = &container[probe]["httpGet"];
                assert_eq!(get["path"].as_str(), Some(path), "{name}: {probe} path");
                let port = resolve_port(container, &get["port"]).unwrap_or_else(|| {
                    panic!(
                        "{name}: {probe} port {:?} is not a declared container port",
                        get["port"]
                    )
                });
                assert!(
                    allowed.contains(&port),
                    "{name} ({role}): {probe} on {port}, which no listener of that role serves ({allowed:?})"
                );
            }
        }
    }
}

#[test]
fn kubernetes_pods_run_as_10001_non_root_read_only_without_capabilities() {
    let docs = kubernetes();
    for (name, deployment) in deployments(&docs) {
        let pod = &deployment["spec"]["template"]["spec"]["securityContext"];
        assert_eq!(
            pod["runAsNonRoot"].as_bool(),
            Some(true),
            "{name}: pod runAsNonRoot"
        );
        assert_eq!(
            pod["runAsUser"].as_u64(),
            Some(APP_UID),
            "{name}: pod runAsUser"
        );
        assert_eq!(
            pod["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "{name}: pod seccompProfile"
        );
        for container in containers(deployment, &name) {
            let sc = &container["securityContext"];
            assert_eq!(
                sc["runAsNonRoot"].as_bool(),
                Some(true),
                "{name}: runAsNonRoot"
            );
            assert_eq!(sc["runAsUser"].as_u64(), Some(APP_UID), "{name}: runAsUser");
            assert_eq!(
                sc["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{name}: readOnlyRootFilesystem"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{name}: allowPrivilegeEscalation"
            );
            assert_eq!(
                strings(&sc["capabilities"]["drop"], &name),
                ["ALL"],
                "{name}: capabilities.drop"
            );
            assert_eq!(
                sc["seccompProfile"]["type"].as_str(),
                Some("RuntimeDefault"),
                "{name}: container seccompProfile"
            );
            for kind in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        !container["resources"][kind][resource].is_null(),
                        "{name}: resources.{kind}.{resource} missing"
                    );
                }
            }
        }
    }
}

#[test]
fn kubernetes_pods_are_scraped_on_the_admin_port() {
    let docs = kubernetes();
    let admin_port = port_of(&kubernetes_settings(&docs).admin.listen.to_string());
    for (name, deployment) in deployments(&docs) {
        let annotations = string_map(
            &deployment["spec"]["template"]["metadata"]["annotations"],
            &name,
        );
        assert_eq!(
            annotations.get("prometheus.io/scrape").map(String::as_str),
            Some("true"),
            "{name}"
        );
        assert_eq!(
            annotations.get("prometheus.io/port"),
            Some(&admin_port.to_string()),
            "{name}: scrape the admin port"
        );
        assert_eq!(
            annotations.get("prometheus.io/path").map(String::as_str),
            Some("/metrics"),
            "{name}"
        );
        for container in lease_sync_containers(deployment, &name) {
            assert_eq!(
                resolve_port(container, &Value::from(admin_port)),
                Some(admin_port),
                "{name}: declare the admin port {admin_port}"
            );
        }
    }
}

#[test]
fn kubernetes_termination_grace_covers_lease_sync_shutdown() {
    let docs = kubernetes();
    let shutdown = longest_shutdown(&kubernetes_settings(&docs));
    for (name, deployment) in deployments(&docs) {
        let pod = &deployment["spec"]["template"]["spec"];
        let grace = Duration::from_secs(uint(
            &pod["terminationGracePeriodSeconds"],
            &format!("{name}.terminationGracePeriodSeconds"),
        ));
        for container in lease_sync_containers(deployment, &name) {
            let pause = Duration::from_secs(
                container["lifecycle"]["preStop"]["sleep"]["seconds"]
                    .as_u64()
                    .unwrap_or(0),
            );
            assert!(
                grace > pause + shutdown,
                "{name}: terminationGracePeriodSeconds {grace:?} must exceed preStop {pause:?} + shutdown {shutdown:?}"
            );
        }
    }
}

#[test]
fn kubernetes_service_and_pdb_select_exactly_the_ingest_pods() {
    let docs = kubernetes();
    let ingest = ingest_deployment(&docs);
    let ingest_labels = pod_labels(ingest);
    let selector = string_map(
        &ingest["spec"]["selector"]["matchLabels"],
        "ingest selector",
    );
    assert!(
        selects(&selector, &ingest_labels),
        "the ingest Deployment's selector must match its pod labels"
    );
    let others: Vec<BTreeMap<String, String>> = deployments(&docs)
        .into_iter()
        .filter(|(_, d)| !std::ptr::eq(*d, ingest))
        .map(|(_, d)| pod_labels(d))
        .collect();
    let services = of_kind(&docs, "Service");
    assert!(!services.is_empty(), "an ingest Service");
    for service in services {
        let selector = string_map(&service["spec"]["selector"], "Service selector");
        assert!(
            selects(&selector, &ingest_labels),
            "the Service must select the ingest pods"
        );
        assert!(
            others.iter().all(|labels| !selects(&selector, labels)),
            "the Service must not select worker pods"
        );
        let container = lease_sync_containers(ingest, "ingest")[0];
        let webhook_port = port_of(&kubernetes_settings(&docs).http.listen.to_string());
        for port in list(&service["spec"]["ports"], "Service ports") {
            assert_eq!(
                uint(&port["port"], "Service port"),
                webhook_port,
                "Service port"
            );
            assert_eq!(
                resolve_port(container, &port["targetPort"]),
                Some(webhook_port),
                "the Service's targetPort must be the ingest container's webhook port"
            );
        }
    }
    let pdbs = of_kind(&docs, "PodDisruptionBudget");
    assert!(!pdbs.is_empty(), "a PodDisruptionBudget for ingest");
    for pdb in pdbs {
        let selector = string_map(&pdb["spec"]["selector"]["matchLabels"], "PDB selector");
        assert!(
            selects(&selector, &ingest_labels),
            "the PDB must select the ingest pods"
        );
        assert!(
            others.iter().all(|labels| !selects(&selector, labels)),
            "the ingest PDB must not select worker pods"
        );
        assert!(
            pdb["spec"]["maxUnavailable"].is_number() || pdb["spec"]["minAvailable"].is_number(),
            "the PDB needs maxUnavailable or minAvailable"
        );
    }
}

#[test]
fn kubernetes_admin_port_is_open_only_to_monitoring() {
    let docs = kubernetes();
    let admin_port = port_of(&kubernetes_settings(&docs).admin.listen.to_string());
    let policies = of_kind(&docs, "NetworkPolicy");
    for (name, deployment) in deployments(&docs) {
        let labels = pod_labels(deployment);
        let covering: Vec<_> = policies
            .iter()
            .filter(|p| {
                selects(
                    &string_map(&p["spec"]["podSelector"]["matchLabels"], "podSelector"),
                    &labels,
                )
            })
            .collect();
        assert!(!covering.is_empty(), "no NetworkPolicy covers {name}");
        for policy in covering {
            assert!(
                strings(&policy["spec"]["policyTypes"], "policyTypes")
                    .contains(&"Ingress".to_owned()),
                "the NetworkPolicy must restrict ingress"
            );
            for rule in list(&policy["spec"]["ingress"], "ingress rules") {
                let ports: Vec<u64> = rule["ports"]
                    .as_sequence()
                    .map(|ps| ps.iter().filter_map(|p| p["port"].as_u64()).collect())
                    .unwrap_or_default();
                let opens_admin = rule["ports"].is_null() || ports.contains(&admin_port);
                if opens_admin {
                    let from = rule["from"].as_sequence().map(Vec::len).unwrap_or(0);
                    assert!(
                        from > 0,
                        "a rule opens the admin port {admin_port} to everyone: {rule:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn kubernetes_config_validates_with_check_config() {
    let docs = kubernetes();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    fs::write(&path, configmap_config(&docs)).expect("write config");
    check_config(
        &path,
        &kubernetes_lease_sync_env(&docs),
        "ConfigMap config.toml",
    );
}

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = yaml_files(&repo().join("deploy"));
    assert!(
        files.len() >= 7,
        "compose.yaml and the kustomize base: {files:?}"
    );
    for file in files {
        let docs = yaml_documents(&file);
        assert!(!docs.is_empty(), "{} is empty", file.display());
        for doc in docs {
            assert!(
                doc.is_mapping(),
                "{}: a document is not a mapping",
                file.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// One Dockerfile instruction, continuation lines joined, comments dropped.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
        current.clear();
    }
    out
}

/// The stages: each starts with its FROM.
fn stages(instructions: &[Instruction]) -> Vec<&[Instruction]> {
    let starts: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.keyword == "FROM")
        .map(|(n, _)| n)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            &instructions[start..starts.get(k + 1).copied().unwrap_or(instructions.len())]
        })
        .collect()
}

/// A JSON (exec-form) argument list, e.g. `["a", "b"]`.
fn exec_form(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{what} must be exec form (JSON): {args}: {e}"))
}

fn position(stage: &[Instruction], keyword: &str, needle: &str) -> Option<usize> {
    stage
        .iter()
        .position(|i| i.keyword == keyword && i.args.contains(needle))
}

#[test]
fn dockerfile_builds_in_stages_with_cargo_chef() {
    let instructions = dockerfile();
    let stages = stages(&instructions);
    assert!(stages.len() >= 3, "multi-stage: planner, builder, runtime");
    assert!(
        stages[0][0].args.starts_with("rust:1.95"),
        "the build image must be pinned to Rust 1.95: {}",
        stages[0][0].args
    );
    assert!(
        instructions.iter().any(|i| i.keyword == "RUN"
            && i.args.contains("cargo install cargo-chef")
            && i.args.contains("--locked")),
        "cargo-chef installed (locked)"
    );
    let planner = stages
        .iter()
        .find(|s| position(s, "RUN", "cargo chef prepare").is_some())
        .expect("a planner stage running `cargo chef prepare`");
    assert!(
        position(planner, "COPY", ". .").is_some(),
        "the planner sees the whole tree"
    );
    let builder = stages
        .iter()
        .find(|s| position(s, "RUN", "cargo chef cook").is_some())
        .expect("a stage running `cargo chef cook`");
    let recipe =
        position(builder, "COPY", "recipe.json").expect("the recipe copied from the planner");
    let cook = position(builder, "RUN", "cargo chef cook").expect("cook");
    let sources = position(builder, "COPY", ". .").expect("sources copied after cooking");
    let build = position(builder, "RUN", "cargo build").expect("cargo build");
    assert!(
        builder[recipe].args.contains("--from="),
        "recipe.json comes from the planner stage"
    );
    assert!(
        recipe < cook && cook < sources && sources < build,
        "order: recipe, cook (cached), sources, build"
    );
    for step in [cook, build] {
        assert!(
            builder[step].args.contains("--release") && builder[step].args.contains("--locked"),
            "{}: --release --locked",
            builder[step].args
        );
    }
    let runtime = stages.last().expect("runtime stage");
    assert!(
        runtime.iter().all(|i| !i.args.contains("cargo ")),
        "the runtime stage builds nothing"
    );
    assert!(
        position(runtime, "COPY", "/usr/local/bin/lease-sync")
            .is_some_and(|i| runtime[i].args.contains("--from=")),
        "the runtime gets the binary from the build stage"
    );
}

#[test]
fn dockerfile_runtime_is_non_root_with_healthcheck_labels_and_entrypoint() {
    let instructions = dockerfile();
    let stages = stages(&instructions);
    let runtime = *stages.last().expect("runtime stage");
    let user = runtime
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("USER in the runtime stage");
    let (uid, gid) = user.args.split_once(':').unwrap_or((&user.args, ""));
    assert!(
        uid.parse::<u64>().is_ok_and(|uid| uid == APP_UID)
            && (gid.is_empty() || gid.parse::<u64>().is_ok_and(|g| g != 0)),
        "USER must be numeric {APP_UID}:{APP_UID}, found {}",
        user.args
    );

    let healthcheck = runtime
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .expect("HEALTHCHECK");
    let (options, command) = healthcheck
        .args
        .split_once("CMD ")
        .expect("HEALTHCHECK ... CMD [...]");
    for option in ["--interval=", "--timeout=", "--start-period=", "--retries="] {
        assert!(options.contains(option), "HEALTHCHECK {option} missing");
    }
    let command = exec_form(command.trim(), "HEALTHCHECK CMD");
    assert!(
        command[0] == "/usr/local/bin/lease-sync" && command[1] == "healthcheck",
        "HEALTHCHECK must run `lease-sync healthcheck`: {command:?}"
    );
    assert_eq!(flag_value(&command, "--config"), Some(CONFIG_PATH));

    let labels: String = runtime
        .iter()
        .filter(|i| i.keyword == "LABEL")
        .map(|i| i.args.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    for key in [
        "title",
        "description",
        "source",
        "licenses",
        "version",
        "revision",
        "created",
    ] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{key}=")),
            "LABEL org.opencontainers.image.{key} missing"
        );
    }
    assert!(
        labels.contains(&format!(
            "org.opencontainers.image.licenses=\"{}\"",
            env!("CARGO_PKG_LICENSE")
        )),
        "the licenses label must match Cargo.toml"
    );
    let version_arg = runtime
        .iter()
        .find(|i| i.keyword == "ARG" && i.args.starts_with("VERSION="))
        .expect("ARG VERSION=<default>");
    assert_eq!(
        version_arg.args,
        format!("VERSION={}", env!("CARGO_PKG_VERSION")),
        "the image version defaults to the crate's"
    );
    for dynamic in ["version", "revision", "created"] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{dynamic}=\"${{")),
            "the {dynamic} label comes from a build ARG"
        );
    }

    let expose: BTreeSet<&str> = runtime
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .collect();
    assert!(
        expose.contains("8080") && expose.contains("9090"),
        "EXPOSE 8080 9090, found {expose:?}"
    );
    let last = |keyword: &str| {
        runtime
            .iter()
            .rev()
            .find(|i| i.keyword == keyword)
            .unwrap_or_else(|| panic!("{keyword} missing"))
    };
    assert_eq!(
        exec_form(&last("ENTRYPOINT").args, "ENTRYPOINT"),
        ["/usr/local/bin/lease-sync"]
    );
    assert_eq!(
        exec_form(&last("CMD").args, "CMD"),
        ["serve", "--config", CONFIG_PATH]
    );
}

#[test]
fn dockerignore_keeps_build_output_history_and_secrets_out_of_the_context() {
    let ignored: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    for entry in [
        "target",
        ".git",
        ".quickstart",
        "fuzz/target",
        "deploy/secrets",
    ] {
        assert!(
            ignored.contains(entry),
            ".dockerignore must exclude {entry}"
        );
    }
    // `cargo chef prepare` and `cargo build` load the whole workspace: every member must be in
    // the build context.
    let members = workspace_members();
    for needed in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "deploy",
        "deploy/config.example.toml",
    ]
    .into_iter()
    .chain(members.iter().map(String::as_str))
    {
        assert!(
            !ignored.contains(needed)
                && !ignored
                    .iter()
                    .any(|entry| needed.starts_with(&format!("{entry}/"))),
            ".dockerignore must keep {needed}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Workspace

/// The workspace members other than the root package, as listed in `Cargo.toml`.
fn workspace_members() -> Vec<String> {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml parses");
    let members: Vec<String> = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .map(|m| m.as_str().expect("a member path").to_owned())
        .filter(|m| m != ".")
        .collect();
    for member in &members {
        assert!(
            repo().join(member).join("Cargo.toml").is_file(),
            "workspace member {member} has a Cargo.toml"
        );
    }
    members
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
    {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn workspace_members_include_the_sandbox_and_the_test_kit() {
    let members = workspace_members();
    for member in ["crates/sandbox", "crates/testkit", "bench"] {
        assert!(
            members.iter().any(|m| m == member),
            "{member} is a workspace member: {members:?}"
        );
    }
}

#[test]
fn only_the_binary_links_the_sandbox() {
    let main = repo().join("src/main.rs");
    assert!(
        read("src/main.rs").contains("lease_sync_sandbox::"),
        "src/main.rs dispatches sandbox-openapp to the sandbox crate"
    );
    let library: Vec<PathBuf> = rust_files(&repo().join("src"))
        .into_iter()
        .filter(|path| *path != main)
        .filter(|path| {
            fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
                .contains("lease_sync_sandbox")
        })
        .collect();
    assert!(
        library.is_empty(),
        "the lease_sync library must not use the sandbox crate: {library:?}"
    );
}

/// Library files (below `src/`) that mention `needle`, outside the paths `allowed` starts.
fn files_mentioning(needle: &str, allowed: &[&str]) -> Vec<PathBuf> {
    let src = repo().join("src");
    rust_files(&src)
        .into_iter()
        .filter(|path| {
            let relative = path.strip_prefix(&src).unwrap_or(path).to_string_lossy();
            !allowed.iter().any(|a| relative.starts_with(a))
        })
        .filter(|path| {
            fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
                .lines()
                // Doc comments may name the crate they keep out.
                .filter(|l| !l.trim_start().starts_with("//"))
                .any(|l| l.contains(needle))
        })
        .collect()
}

#[test]
fn only_the_outbound_module_knows_reqwest_and_only_http_knows_axum_and_hyper() {
    let reqwest = files_mentioning("reqwest", &["outbound.rs"]);
    assert!(
        reqwest.is_empty(),
        "reqwest outside src/outbound.rs: {reqwest:?}"
    );
    for web in ["axum", "hyper"] {
        let found = files_mentioning(web, &["http/", "main.rs"]);
        assert!(found.is_empty(), "{web} outside src/http/: {found:?}");
    }
}

/// One module owns every Redis key and script (docs/ARCHITECTURE.md, "Redis layout"): no
/// other library file uses the redis crate. (`config/mod.rs` re-exports its own `redis`
/// settings module, which is not the crate.)
#[test]
fn only_the_queue_module_talks_to_redis() {
    let found = files_mentioning("redis::", &["queue/", "config/mod.rs"]);
    assert!(
        found.is_empty(),
        "the redis crate outside src/queue/: {found:?}"
    );
}

/// The modules of `crate::…` a library file uses, outside comments.
fn crate_modules_used(relative: &str) -> BTreeSet<String> {
    read(relative)
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .flat_map(|l| {
            l.match_indices("crate::")
                .map(|(i, _)| {
                    l[i + "crate::".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The dependency rules of docs/ARCHITECTURE.md for the pure modules: they use nothing that
/// does I/O (Redis, HTTP, the clock of a running service).
#[test]
fn pure_modules_depend_only_on_what_the_architecture_allows() {
    let rules: [(&str, &[&str]); 13] = [
        ("src/event.rs", &[]),
        ("src/personal.rs", &[]),
        ("src/history.rs", &["personal"]),
        ("src/access.rs", &[]),
        ("src/sources/buildium/webhook.rs", &[]),
        ("src/sources/buildium/lease.rs", &["access"]),
        ("src/retry.rs", &[]),
        ("src/resident.rs", &["event"]),
        ("src/signature/mod.rs", &["signature"]),
        ("src/signature/standard_webhooks.rs", &["signature"]),
        ("src/signature/hmac_sha256.rs", &["signature"]),
        ("src/signature/source.rs", &["signature", "config"]),
        ("src/reconcile/plan.rs", &["config", "event", "resident"]),
    ];
    for (file, allowed) in rules {
        let used = crate_modules_used(file);
        let extra: Vec<&String> = used
            .iter()
            .filter(|m| !allowed.contains(&m.as_str()))
            .collect();
        assert!(
            extra.is_empty(),
            "{file} uses crate::{extra:?}; allowed: {allowed:?}"
        );
    }
}
