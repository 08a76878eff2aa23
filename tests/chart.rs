//! The Helm chart (charts/nightshift) against the crate, without a cluster: its CRDs are a copy of
//! crds/nightshift.yaml (Helm installs only the chart's crds/), and it is versioned with the crate.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn the_chart_crds_are_a_copy_of_crds_nightshift_yaml() {
    let source = repo().join("crds/nightshift.yaml");
    let copy = repo().join("charts/nightshift/crds/nightshift.yaml");
    let meta = std::fs::symlink_metadata(&copy).unwrap_or_else(|e| panic!("{}: {e}; run `make crd`", copy.display()));
    assert!(
        meta.file_type().is_file(),
        "{} must be a regular file (Helm refuses symlinks): run `make crd`",
        copy.display()
    );
    assert!(
        read(&source) == read(&copy),
        "charts/nightshift/crds/nightshift.yaml differs from crds/nightshift.yaml: run `make crd` \
         (or `make chart-crd`) and commit the result"
    );
}

#[test]
fn the_chart_is_versioned_with_the_crate() {
    let chart: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(&repo().join("charts/nightshift/Chart.yaml"))).expect("Chart.yaml is YAML");
    let field = |name: &str| chart.get(name).and_then(|v| v.as_str()).map(str::to_string);
    assert_eq!(field("name").as_deref(), Some("nightshift"));
    assert_eq!(field("apiVersion").as_deref(), Some("v2"));
    let crate_version = env!("CARGO_PKG_VERSION");
    assert_eq!(field("version").as_deref(), Some(crate_version), "Chart.yaml version must be the crate version");
    assert_eq!(field("appVersion").as_deref(), Some(crate_version), "Chart.yaml appVersion must be the crate version");
}

#[test]
fn the_values_schema_refuses_unknown_top_level_values() {
    let schema: serde_json::Value =
        serde_json::from_str(&read(&repo().join("charts/nightshift/values.schema.json"))).expect("the schema is JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["additionalProperties"], false);
    // Every top-level key of values.yaml is described by the schema.
    let values: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(&repo().join("charts/nightshift/values.yaml"))).expect("values.yaml is YAML");
    let properties = schema["properties"].as_object().expect("the schema has properties");
    for key in values.as_mapping().expect("values.yaml is a mapping").keys() {
        let key = key.as_str().expect("string keys");
        assert!(properties.contains_key(key), "values.yaml has `{key}` but values.schema.json does not describe it");
    }
}
