//! The deployment files: the Dockerfile (hadolint, and its runtime stage's root filesystem
//! running photoq as the user it names), the compose file (the Compose specification's
//! schema), and the Kubernetes manifests (the Kubernetes schemas, KEDA's ScaledObject
//! schema, and agreement with photoq's own timings). The tools are installed by
//! `deploy/dev.sh test` (Python ones in a virtualenv, KEDA's models from npm, the root
//! filesystem by deploy/rootfs.sh), which names them in PHOTOQ_TEST_* variables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::cluster::{wait_until_up, Client, BIN};
use common::{corpus_dir, pg_server, read};
use figment::providers::Format;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A tool of the test environment: PHOTOQ_TEST_<VAR> names a directory holding it.
fn tool_dir(var: &str) -> PathBuf {
    let name = format!("PHOTOQ_TEST_{var}");
    PathBuf::from(std::env::var(&name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with deploy/dev.sh test, which installs the tools")
    }))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn yaml_docs(path: &Path) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

#[test]
fn dockerfile_passes_hadolint() {
    let hadolint = tool_dir("VENV").join("bin/hadolint");
    let (ok, out) = run(Command::new(&hadolint)
        .arg("--config")
        .arg(repo("deploy/hadolint.yaml"))
        .arg(repo("deploy/Dockerfile")));
    assert!(ok, "{out}");
    // And it does fail on a bad Dockerfile (the check is live).
    let bad = std::env::temp_dir().join(format!("pq-bad-{}.Dockerfile", std::process::id()));
    std::fs::write(
        &bad,
        "FROM debian:latest\nRUN cd /tmp && apt-get install curl\n",
    )
    .unwrap();
    let (ok, out) = run(Command::new(&hadolint).arg(&bad));
    let _ = std::fs::remove_file(&bad);
    assert!(!ok && out.contains("DL3007"), "{out}");
}

#[test]
fn compose_file_matches_the_compose_specification() {
    let check = tool_dir("VENV").join("bin/check-jsonschema");
    let compose = repo("deploy/compose.yaml");
    let (ok, out) = run(Command::new(&check)
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(&compose));
    assert!(ok, "{out}");
    // The files it mounts are in the repository.
    let docs = yaml_docs(&compose);
    let services = docs[0]["services"].as_mapping().unwrap();
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(
                    repo("deploy").join(source).is_file(),
                    "{name:?} mounts {source}"
                );
            }
        }
    }
    // Two API processes, two workers, each with a stop grace longer than photoq's own.
    assert_eq!(services["api"]["deploy"]["replicas"], 2);
    assert_eq!(services["worker"]["deploy"]["replicas"], 2);
    assert_eq!(services["migrate"]["command"][0], "migrate");
}

/// Every manifest of the kustomizations (the application's and the migration Job's); each
/// lists every manifest of its directory, and both run the same image.
fn manifests() -> Vec<PathBuf> {
    let app = repo("deploy/k8s");
    let migrate = app.join("migrate");
    let image = |dir: &Path| yaml_docs(&dir.join("kustomization.yaml"))[0]["images"].clone();
    assert_eq!(
        image(&app),
        image(&migrate),
        "the migration Job runs another image"
    );
    let mut all = listed(&app);
    all.extend(listed(&migrate));
    all
}

fn listed(dir: &Path) -> Vec<PathBuf> {
    let kustomization = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    let listed: Vec<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, present, "kustomization resources vs files");
    listed.iter().map(|n| dir.join(n)).collect()
}

#[test]
fn kubernetes_manifests_match_their_schemas() {
    let validate = tool_dir("VENV").join("bin/kubernetes-validate");
    let (core, custom): (Vec<PathBuf>, Vec<PathBuf>) = manifests()
        .into_iter()
        .partition(|p| !p.ends_with("keda-scaledobject.yaml"));
    let (ok, out) = run(Command::new(&validate).arg("--strict").args(&core));
    assert!(ok && !out.contains("WARN"), "{out}");
    // KEDA's ScaledObject against the schema of KEDA's own CRD (its published models).
    let node_modules = tool_dir("NODE_MODULES");
    let script = "const fs = require('fs');\
        const YAML = require(process.env.NODE_MODULES + '/yaml');\
        const { ScaledObject } = require(process.env.NODE_MODULES + '/@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject');\
        for (const doc of YAML.parseAllDocuments(fs.readFileSync(process.argv[1], 'utf8'))) {\
          new ScaledObject(doc.toJS()).validate(); console.log('valid');\
        }";
    let check = |path: &Path| {
        run(Command::new("node")
            .env("NODE_MODULES", &node_modules)
            .args(["-e", script])
            .arg(path))
    };
    let (ok, out) = check(&custom[0]);
    assert!(ok && out.contains("valid"), "{out}");
    let broken = std::env::temp_dir().join(format!("pq-scaledobject-{}.yaml", std::process::id()));
    let text = std::fs::read_to_string(&custom[0]).unwrap();
    std::fs::write(
        &broken,
        text.replace("minReplicaCount: 0", "minReplicaCount: none"),
    )
    .unwrap();
    let (ok, out) = check(&broken);
    let _ = std::fs::remove_file(&broken);
    assert!(!ok, "a broken ScaledObject passed: {out}");
}

/// The number in a duration setting of the ConfigMap's photoq.toml.
fn setting(toml: &toml::Value, section: &str, key: &str) -> i64 {
    toml[section][key].as_integer().unwrap()
}

#[test]
fn kubernetes_timings_agree_with_photoq() {
    let dir = repo("deploy/k8s");
    let config_map = &yaml_docs(&dir.join("configmap.yaml"))[0];
    let file: toml::Value =
        toml::from_str(config_map["data"]["photoq.toml"].as_str().unwrap()).unwrap();
    // The file is a valid photoq configuration.
    let fig = photoq::config::Config::figment(None).merge(figment::providers::Toml::string(
        config_map["data"]["photoq.toml"].as_str().unwrap(),
    ));
    let config = photoq::config::Config::from_figment(fig).expect("the ConfigMap's photoq.toml");

    let pod = |file: &str| yaml_docs(&dir.join(file))[0]["spec"]["template"]["spec"].clone();
    let worker = pod("worker.yaml");
    let grace = worker["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        grace >= setting(&file, "worker", "shutdown_grace_secs") + 10,
        "the worker's grace period leaves no room for its drain"
    );
    let metrics_port = worker["containers"][0]["ports"][0]["containerPort"]
        .as_u64()
        .unwrap();
    assert_eq!(
        config.worker.metrics_bind.unwrap().port() as u64,
        metrics_port
    );

    let api = pod("api.yaml");
    let pre_stop: i64 = api["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(api["terminationGracePeriodSeconds"].as_i64().unwrap() >= pre_stop + 30);
    assert_eq!(
        api["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/readyz?redis=optional"
    );
    assert_eq!(
        api["containers"][0]["livenessProbe"]["httpGet"]["path"],
        "/healthz"
    );
    assert_eq!(
        config.bind.port() as u64,
        api["containers"][0]["ports"][0]["containerPort"]
            .as_u64()
            .unwrap()
    );

    // KEDA watches the streams photoq writes, in its consumer group.
    let keys = photoq::queue::Keys::new(&config.redis.prefix);
    let scaled = &yaml_docs(&dir.join("keda-scaledobject.yaml"))[0];
    let mut streams: Vec<&str> = scaled["spec"]["triggers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["metadata"]["consumerGroup"], photoq::queue::GROUP);
            t["metadata"]["stream"].as_str().unwrap()
        })
        .collect();
    streams.sort();
    streams.dedup();
    assert_eq!(streams, [keys.bulk.as_str(), keys.jobs.as_str()]);
    assert_eq!(scaled["spec"]["minReplicaCount"], 0);
}

/// The Dockerfile's instruction `name` in its last stage, continued lines joined.
fn instruction(dockerfile: &str, name: &str) -> String {
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap();
    let joined = runtime.replace("\\\n", " ");
    joined
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in the runtime stage"))
        .trim()
        .to_owned()
}

#[tokio::test]
async fn the_image_root_filesystem_runs_photoq_as_its_user() {
    let rootfs = tool_dir("ROOTFS");
    let dockerfile = std::fs::read_to_string(repo("deploy/Dockerfile")).unwrap();
    let user = instruction(&dockerfile, "USER");
    assert_eq!(instruction(&dockerfile, "ENTRYPOINT"), "[\"photoq\"]");
    let (uid, _) = user.split_once(':').unwrap();
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    let entry = passwd
        .lines()
        .find(|l| l.split(':').nth(2) == Some(uid))
        .unwrap_or_else(|| panic!("no user {uid} in the image"));
    let home = entry.split(':').nth(5).unwrap().to_owned();
    assert!(entry.starts_with("photoq:"), "{entry}");
    assert!(instruction(&dockerfile, "WORKDIR") == home);

    // The binary goes where the Dockerfile copies it.
    let target = rootfs.join("usr/local/bin/photoq");
    std::fs::copy(BIN, &target).unwrap();

    let name = format!(
        "pqimage_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let port = common::free_port();
    let env = [
        ("PHOTOQ_DATABASE_URL", format!("{}/{name}", pg_server())),
        ("PHOTOQ_REDIS_PREFIX", name.clone()),
        ("PHOTOQ_REDIS_BLOCK_MS", "250".into()),
        ("PHOTOQ_BIND", format!("127.0.0.1:{port}")),
        ("PHOTOQ_STORAGE_ROOT", format!("{home}/data")),
    ];
    // As the image runs it: the user, the working directory, the entrypoint.
    let in_image = |args: &[&str]| {
        let mut cmd = Command::new("/usr/sbin/chroot");
        cmd.arg(format!("--userspec={user}"))
            .arg(&rootfs)
            .args([
                "/bin/sh",
                "-c",
                &format!("cd {home} && exec photoq \"$@\""),
                "photoq",
            ])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &home)
            .envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    };
    let (ok, out) = run(&mut in_image(&["migrate"]));
    assert!(ok, "migrate in the image: {out}");
    let (ok, out) = run(&mut in_image(&["keys", "create", "--name", "image"]));
    assert!(ok, "{out}");
    let key = out.lines().last().unwrap().trim().to_owned();

    let mut child = in_image(&["all", "--concurrency", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_up(&base).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(uids.split_whitespace().skip(1).all(|u| u == uid), "{uids}");
    // The image's health check answers.
    let health = instruction(&dockerfile, "HEALTHCHECK");
    assert!(health.ends_with("CMD [\"photoq\", \"health\"]"), "{health}");
    let (ok, out) = run(&mut in_image(&["health"]));
    assert!(ok, "{out}");

    // A photo goes through, its files written as the image's user.
    let client = Client::new(&base, &key);
    let batch = client
        .upload(&[(
            "gps.jpg".into(),
            read(corpus_dir().join("jpg/gps/DSCN0010.jpg")),
        )])
        .await;
    let done = client.wait_batch(batch["batch_id"].as_str().unwrap()).await;
    assert_eq!(done["completed"], 1, "{done}");
    let stored = rootfs
        .join(home.trim_start_matches('/'))
        .join("data/variants");
    // Variants are stored before the photo's completion is committed.
    let variants = common::stored_objects(&stored);
    assert!(!variants.is_empty(), "no variant stored");
    for file in variants {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().uid().to_string(),
            uid,
            "{file:?}"
        );
    }

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "photoq all exited {status}");
    let _ = std::fs::remove_dir_all(rootfs.join(home.trim_start_matches('/')).join("data"));
    common::drop_database(&name).await;
}
