//! Identifiers: a short type prefix and a time-ordered ULID, e.g. `ses_01j9…`.
//! The prefix makes an id readable in logs and chat; the ULID keeps ids sortable by creation.

/// A new identifier with the given type prefix (`hum`, `idn`, `prf`, `ses`, `trg`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// Declares an id type: a newtype over the text id with its prefix, so a session's id cannot
/// be passed where a human's is expected. Read from storage with `from_stored` (trusted);
/// typed by a person or taken from a URL with `parse` (checked: prefix, then 1–64 lower-case
/// letters and digits).
macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new, unique id.
            #[allow(clippy::new_without_default)]
            pub fn new() -> $name {
                $name(new_id($prefix))
            }

            /// An id read back from storage or a trusted record.
            pub fn from_stored(text: impl Into<String>) -> $name {
                $name(text.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TypedId for $name {
            fn from_stored_text(text: String) -> $name {
                $name(text)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<$name, IdError> {
                let ok = text
                    .strip_prefix(concat!($prefix, "_"))
                    .is_some_and(|rest| {
                        (1..=64).contains(&rest.len())
                            && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    });
                if ok {
                    Ok($name(text.to_string()))
                } else {
                    Err(IdError {
                        text: text.chars().take(80).collect(),
                        what: $what,
                        prefix: $prefix,
                    })
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl From<&$name> for String {
            fn from(id: &$name) -> String {
                id.0.clone()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

id_type!(
    /// A session: `ses_…`.
    SessionId, "ses", "session id"
);
id_type!(
    /// A human: `hum_…`.
    HumanId, "hum", "human id"
);
id_type!(
    /// A chat or GitHub account linked to a human: `idn_…`.
    IdentityId, "idn", "identity id"
);
id_type!(
    /// A profile (all its versions): `prf_…`.
    ProfileId, "prf", "profile id"
);
id_type!(
    /// A sandbox (one container): `sbx_…`.
    SandboxId, "sbx", "sandbox id"
);
id_type!(
    /// A trigger: `trg_…`.
    TriggerId, "trg", "trigger id"
);

/// What every id type has: storage reads it back without checking (it wrote it).
pub trait TypedId: Sized {
    fn from_stored_text(text: String) -> Self;
}

/// Text that is not an id of the kind asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a {what} (those look like {prefix}_01j9…)")]
pub struct IdError {
    text: String,
    what: &'static str,
    prefix: &'static str,
}

/// Milliseconds since the Unix epoch, the one time unit stored in the database.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_ids_parse_only_their_own_kind_with_a_clear_error() {
        let s = SessionId::new();
        assert_eq!(s.as_str().parse::<SessionId>().unwrap(), s);
        assert_eq!(
            s.as_str().parse::<HumanId>().unwrap_err().to_string(),
            format!("`{s}` is not a human id (those look like hum_01j9…)")
        );
        for bad in [
            "", "ses_", "ses", "ses_ABC", "ses_a/b", "ses_../x", "xses_1",
        ] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad:?}");
        }
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
    }

    #[test]
    fn ids_carry_their_prefix_and_sort_by_creation() {
        let a = new_id("ses");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("ses");
        assert!(a.starts_with("ses_") && a.len() == 30, "{a}");
        assert!(a < b);
    }
}
