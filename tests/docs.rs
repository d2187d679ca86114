//! The README's configuration table agrees with `config/default.toml` and with the way
//! environment variables are mapped.

use std::collections::BTreeMap;

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

#[test]
fn readme_configuration_table_matches_defaults() {
    let defaults: toml::Value = toml::from_str(photoq::config::DEFAULT_TOML).unwrap();
    let mut expected = BTreeMap::new();
    flatten("", &defaults, &mut expected);

    let readme = include_str!("../README.md");
    let mut documented = BTreeMap::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `key` | `ENV` | `default` | meaning |
        if cells.len() < 5 || !cells[2].starts_with("`PHOTOQ_") {
            continue;
        }
        let unquote = |s: &str| s.trim_matches('`').to_owned();
        let (key, env, default) = (unquote(cells[1]), unquote(cells[2]), unquote(cells[3]));
        let mapped = photoq::config::env_key_to_path(env.trim_start_matches("PHOTOQ_"));
        assert_eq!(mapped, key, "{env} maps to {mapped}, documented as {key}");
        documented.insert(key, default);
    }
    assert_eq!(documented, expected, "README table vs config/default.toml");
}
