//! The profile templates shipped in `templates/profiles/` are valid profiles: an admin can
//! apply each one as it is.

use airlock_core::domain::ProfileSpec;

#[test]
fn every_profile_template_is_a_valid_profile() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/profiles");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let spec =
                ProfileSpec::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                path.file_stem().unwrap().to_str().unwrap(),
                spec.name,
                "a template's file name is its profile name"
            );
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "expected the shipped templates in {}",
        dir.display()
    );
}

#[test]
fn the_configuration_reference_lists_every_key() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
    )
    .unwrap();
    for (key, env, _) in airlock_core::config::documented_keys() {
        assert!(
            doc.contains(&format!("`{key}`")),
            "docs/configuration.md does not list `{key}`"
        );
        assert!(
            doc.contains(&format!("`{env}`")),
            "docs/configuration.md does not list `{env}`"
        );
    }
}
