//! The operator image (`rookery-operator:dev`, FROM scratch, built by `e2e/images/build.sh`)
//! starts as its unprivileged user and does its work: it renders an example exactly as the
//! library does.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn the_operator_image_renders_what_the_library_renders() {
    let inspect = Command::new("docker")
        .args([
            "image",
            "inspect",
            "-f",
            "{{.Config.User}}",
            "rookery-operator:dev",
        ])
        .output()
        .expect("docker is not installed");
    assert!(
        inspect.status.success(),
        "image rookery-operator:dev is missing: run e2e/images/build.sh with ROOKERY_OPERATOR_BIN (scripts/test does)"
    );
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "65532:65532"
    );
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/minimal.yaml"),
    )
    .unwrap();
    let mut child = Command::new("docker")
        .args([
            "run",
            "--rm",
            "-i",
            "--read-only",
            "rookery-operator:dev",
            "render",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(example.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_json::Value = serde::Deserialize::deserialize(d).unwrap();
            format!(
                "{}/{}",
                v["kind"].as_str().unwrap(),
                v["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    // The same objects, in the same order, as the library renders (the keys and certificates
    // are fresh on each run, so names and kinds are compared).
    let cluster: rookery_operator::crd::MqttCluster = serde_yaml::from_str(&example).unwrap();
    let names = rookery_operator::builders::meta::Names::of(&cluster, "cluster.local");
    let material = rookery_operator::inputs::material(
        &cluster,
        &names,
        &rookery_operator::inputs::Inputs::default(),
    )
    .unwrap();
    let library: Vec<String> = rookery_operator::render::render(
        &cluster,
        &rookery_operator::builders::Environment::default(),
        &material,
        0,
    )
    .unwrap()
    .objects
    .iter()
    .map(|v| {
        format!(
            "{}/{}",
            v["kind"].as_str().unwrap(),
            v["metadata"]["name"].as_str().unwrap()
        )
    })
    .collect();
    assert_eq!(kinds, library);
}
