//! The list of migrations a program runs ([`Migrator`]), and the start-up
//! check that every id is well formed and unique.
//!
//! dynbulk is an engine: the migrations belong to the team that runs them and
//! live in its own crate, whose `main` hands them to
//! [`crate::cli::run_cli`] (the sea-orm-migration pattern).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::migration::{valid_id, Migration};

/// Lists the migrations a program can run.
///
/// A migrations crate implements it on a unit struct and passes that to
/// [`crate::cli::run_cli`]:
///
/// ```
/// use std::sync::Arc;
/// use dynbulk::prelude::*;
///
/// struct AddTtl;
///
/// impl Migration for AddTtl {
///     fn id(&self) -> &'static str {
///         "20250101_add_ttl"
///     }
///     fn description(&self) -> &'static str {
///         "Set expiresAt on every session"
///     }
///     fn transform(&self, _item: &Item) -> Result<Change, TransformError> {
///         Ok(Change::Keep)
///     }
/// }
///
/// struct Migrations;
///
/// impl Migrator for Migrations {
///     fn migrations(&self) -> Vec<Arc<dyn Migration>> {
///         vec![Arc::new(AddTtl)]
///     }
/// }
/// // fn main() -> std::process::ExitCode { dynbulk::cli::run_cli(Migrations) }
/// ```
///
/// A closure returning the list, or the list itself, is a `Migrator` too.
pub trait Migrator {
    /// Every migration this program knows, in any order: dynbulk checks their
    /// ids (well formed, unique) at start-up and runs them in id order.
    fn migrations(&self) -> Vec<Arc<dyn Migration>>;
}

impl Migrator for Vec<Arc<dyn Migration>> {
    fn migrations(&self) -> Vec<Arc<dyn Migration>> {
        self.clone()
    }
}

impl<F> Migrator for F
where
    F: Fn() -> Vec<Arc<dyn Migration>>,
{
    fn migrations(&self) -> Vec<Arc<dyn Migration>> {
        self()
    }
}

/// Why a program's list of migrations was refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidMigration {
    /// An id that is not `YYYYMMDD_description` (a real date, then lowercase
    /// letters, digits and underscores).
    MalformedId(String),
    /// Two migrations share an id.
    DuplicateId(String),
}

impl fmt::Display for InvalidMigration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidMigration::MalformedId(id) => write!(
                f,
                "migration id {id:?} is not YYYYMMDD_description (a real date, then lowercase \
                 letters, digits and underscores); rename it in its file and where it is registered"
            ),
            InvalidMigration::DuplicateId(id) => write!(
                f,
                "two migrations have the id {id:?}; every migration needs its own id (the ledger \
                 records runs by id)"
            ),
        }
    }
}

impl std::error::Error for InvalidMigration {}

/// The migrations of `migrator`, sorted by id.
///
/// # Errors
/// The first malformed id, or the first id that two migrations share.
pub fn checked(migrator: &dyn Migrator) -> Result<Vec<Arc<dyn Migration>>, InvalidMigration> {
    let mut by_id: BTreeMap<&'static str, Arc<dyn Migration>> = BTreeMap::new();
    for m in migrator.migrations() {
        let id = m.id();
        if !valid_id(id) {
            return Err(InvalidMigration::MalformedId(id.to_owned()));
        }
        if by_id.insert(id, m).is_some() {
            return Err(InvalidMigration::DuplicateId(id.to_owned()));
        }
    }
    Ok(by_id.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::{Change, Item, TransformError};

    struct Named(&'static str);

    impl Migration for Named {
        fn id(&self) -> &'static str {
            self.0
        }
        fn description(&self) -> &'static str {
            "test"
        }
        fn transform(&self, _: &Item) -> Result<Change, TransformError> {
            Ok(Change::Keep)
        }
    }

    fn list(ids: &[&'static str]) -> Vec<Arc<dyn Migration>> {
        ids.iter()
            .map(|id| Arc::new(Named(id)) as Arc<dyn Migration>)
            .collect()
    }

    #[test]
    fn good_ids_come_back_in_id_order() {
        let got = checked(&list(&["20250102_b", "20241231_a", "20250101_c"])).unwrap();
        let ids: Vec<_> = got.iter().map(|m| m.id()).collect();
        assert_eq!(ids, ["20241231_a", "20250101_c", "20250102_b"]);
    }

    #[test]
    fn a_malformed_id_is_named() {
        for bad in [
            "2025_add_ttl",
            "20251301_bad_month",
            "20250101_Add_TTL",
            "20250101_",
            "add_ttl",
        ] {
            assert_eq!(
                checked(&list(&["20250101_fine", bad])).err(),
                Some(InvalidMigration::MalformedId(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_duplicate_id_is_named() {
        let err = checked(&list(&["20250101_a", "20250102_b", "20250101_a"]))
            .err()
            .unwrap();
        assert_eq!(err, InvalidMigration::DuplicateId("20250101_a".into()));
        assert!(err.to_string().contains("\"20250101_a\""));
    }

    #[test]
    fn a_closure_is_a_migrator() {
        let m = || list(&["20250101_a"]);
        assert_eq!(checked(&m).unwrap().len(), 1);
    }
}
