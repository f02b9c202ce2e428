//! The scope grammar, parsed once into types.
//!
//! ```text
//! scope    = "storage:" ("read" / "write") ":" pattern
//!          / "llm:chat" / "llm:embed" / "chain:read" / "profile:read"
//! pattern  = collection            ; exactly that collection
//!          / [collection-prefix] "*" ; every collection starting with the prefix ("*": all)
//! ```
//! SELF's own permission words are synonyms where they map cleanly: `ai:chat` is `llm:chat` and
//! `blockchain:read` is `chain:read`. They parse to the same scope, so a grant shows and stores the
//! canonical name once. `storage:read` and `storage:write` without a collection mean the app's
//! own collections: a namespace derived from its client id ([`app_namespace`], `app-<16 hex>`),
//! as atproto's per-collection scopes do, never the user's whole store. So they parse only where
//! the app is known ([`ScopeSet::parse_for`]), and names starting `app-` are reserved for those
//! namespaces: no app may name another's.
//!
//! Owner-only powers (backup, audit, grants, account) have no scope: no app can ever be granted them.

use crate::names::{is_collection_prefix, Collection};
use crate::{AppId, Error};
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Which collections a storage scope reaches.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum CollectionPattern {
    Exact(Collection),
    /// Every collection whose name starts with this (possibly empty) prefix, except those in an
    /// app's namespace (`app-...`) unless the prefix itself is in one: `storage:read:*` or
    /// `storage:read:ap*` never reach what other apps keep for themselves.
    Prefix(String),
}

/// Whether a prefix pattern `p` reaches `name` (a collection, or another pattern's prefix).
fn prefix_reaches(p: &str, name: &str) -> bool {
    name.starts_with(p) && (p.starts_with(APP_PREFIX) || !name.starts_with(APP_PREFIX))
}

impl CollectionPattern {
    pub fn matches(&self, collection: &Collection) -> bool {
        match self {
            CollectionPattern::Exact(c) => c == collection,
            CollectionPattern::Prefix(p) => prefix_reaches(p, collection.as_str()),
        }
    }

    /// True when every collection `other` matches is also matched by `self`.
    pub fn covers(&self, other: &CollectionPattern) -> bool {
        match (self, other) {
            (_, CollectionPattern::Exact(c)) => self.matches(c),
            (CollectionPattern::Prefix(p), CollectionPattern::Prefix(q)) => prefix_reaches(p, q),
            (CollectionPattern::Exact(_), CollectionPattern::Prefix(_)) => false,
        }
    }
}

impl fmt::Display for CollectionPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CollectionPattern::Exact(c) => write!(f, "{c}"),
            CollectionPattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// One permission an app can be granted.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Scope {
    StorageRead(CollectionPattern),
    StorageWrite(CollectionPattern),
    LlmChat,
    LlmEmbed,
    ChainRead,
    ProfileRead,
}

impl Scope {
    pub fn storage_read(c: &Collection) -> Scope {
        Scope::StorageRead(CollectionPattern::Exact(c.clone()))
    }
    pub fn storage_write(c: &Collection) -> Scope {
        Scope::StorageWrite(CollectionPattern::Exact(c.clone()))
    }

    /// True when holding `self` grants everything `other` grants.
    pub fn covers(&self, other: &Scope) -> bool {
        match (self, other) {
            (Scope::StorageRead(a), Scope::StorageRead(b)) | (Scope::StorageWrite(a), Scope::StorageWrite(b)) => {
                a.covers(b)
            }
            _ => self == other,
        }
    }

    /// The broadest scope of each kind, one per variant (for `scopes_supported` in the OAuth
    /// metadata). The match in the test beside it fails to compile when a variant is added.
    pub fn broadest() -> [Scope; 6] {
        let all = || CollectionPattern::Prefix(String::new());
        [
            Scope::StorageRead(all()),
            Scope::StorageWrite(all()),
            Scope::LlmChat,
            Scope::LlmEmbed,
            Scope::ChainRead,
            Scope::ProfileRead,
        ]
    }

    /// The scope in plain words, for the consent page.
    pub fn describe(&self) -> String {
        fn which(p: &CollectionPattern) -> String {
            match p {
                CollectionPattern::Exact(c) => format!("your \u{201c}{c}\u{201d} records"),
                CollectionPattern::Prefix(p) if p.is_empty() => {
                    "all your records, in every collection but those other apps keep for themselves".into()
                }
                CollectionPattern::Prefix(p) if is_app_namespace(p) => "the records it keeps in your instance".into(),
                CollectionPattern::Prefix(p) => {
                    format!("your records in every collection whose name starts with \u{201c}{p}\u{201d}")
                }
            }
        }
        match self {
            Scope::StorageRead(p) => format!("Read {}", which(p)),
            Scope::StorageWrite(p) => format!("Create, change and delete {}", which(p)),
            Scope::LlmChat => "Chat with your private assistant".into(),
            Scope::LlmEmbed => "Compute embeddings with your private assistant's model".into(),
            Scope::ChainRead => "Read your public chain identity and grants".into(),
            Scope::ProfileRead => "See your username and account id".into(),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::StorageRead(p) => write!(f, "storage:read:{p}"),
            Scope::StorageWrite(p) => write!(f, "storage:write:{p}"),
            Scope::LlmChat => f.write_str("llm:chat"),
            Scope::LlmEmbed => f.write_str("llm:embed"),
            Scope::ChainRead => f.write_str("chain:read"),
            Scope::ProfileRead => f.write_str("profile:read"),
        }
    }
}

impl FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::invalid(format!("unknown or malformed scope {:?}", truncate(s)));
        match s {
            "llm:chat" | "ai:chat" => return Ok(Scope::LlmChat),
            "llm:embed" => return Ok(Scope::LlmEmbed),
            "chain:read" | "blockchain:read" => return Ok(Scope::ChainRead),
            "profile:read" => return Ok(Scope::ProfileRead),
            _ => {}
        }
        let (write, pattern) = if let Some(p) = s.strip_prefix("storage:read:") {
            (false, p)
        } else if let Some(p) = s.strip_prefix("storage:write:") {
            (true, p)
        } else {
            return Err(bad());
        };
        let pattern = match pattern.strip_suffix('*') {
            Some(prefix) if is_collection_prefix(prefix) => CollectionPattern::Prefix(prefix.to_owned()),
            Some(_) => return Err(bad()),
            None => CollectionPattern::Exact(Collection::parse(pattern).map_err(|_| bad())?),
        };
        Ok(if write { Scope::StorageWrite(pattern) } else { Scope::StorageRead(pattern) })
    }
}

/// The collections an app owns in every user's store: `app-` and the first 16 hex digits of its
/// client id. Its bare `storage:read`/`storage:write` reach these and nothing else.
pub fn app_namespace(app: &AppId) -> String {
    format!("app-{}", hex::encode(&app.as_bytes()[..8]))
}

const APP_PREFIX: &str = "app-";

fn is_app_namespace(prefix: &str) -> bool {
    prefix
        .strip_prefix(APP_PREFIX)
        .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Whether a pattern names collections reserved for app namespaces (`app-...`) outside `own`.
fn reaches_into_others(p: &CollectionPattern, own: &str) -> bool {
    let text = match p {
        CollectionPattern::Exact(c) => c.as_str(),
        CollectionPattern::Prefix(p) => p.as_str(),
    };
    text.starts_with(APP_PREFIX) && !text.starts_with(own)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A set of scopes, as carried by a grant or token. Its text form is the OAuth `scope` parameter:
/// scopes separated by single spaces, in a canonical order.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct ScopeSet(BTreeSet<Scope>);

/// Most scopes one request may name; keeps parsing and consent pages bounded.
pub const MAX_SCOPES: usize = 64;

impl ScopeSet {
    /// Parses scopes that name their collections (a grant's, a token's, a consent form's).
    pub fn parse(s: &str) -> Result<Self, Error> {
        Self::parse_with(s, None)
    }

    /// Parses what `app` asks for (its registration, its authorization request): bare
    /// `storage:read`/`storage:write` become its own namespace, and no scope of it may name
    /// another app's (`app-...` collections, other than its own).
    pub fn parse_for(s: &str, app: &AppId) -> Result<Self, Error> {
        Self::parse_with(s, Some(app))
    }

    fn parse_with(s: &str, app: Option<&AppId>) -> Result<Self, Error> {
        let namespace = app.map(app_namespace);
        let own = namespace.clone().map(CollectionPattern::Prefix);
        let mut set = BTreeSet::new();
        for part in s.split(' ').filter(|p| !p.is_empty()) {
            let scope = match (part, &own) {
                ("storage:read", Some(own)) => Scope::StorageRead(own.clone()),
                ("storage:write", Some(own)) => Scope::StorageWrite(own.clone()),
                ("storage:read" | "storage:write", None) => {
                    return Err(Error::invalid(format!(
                        "{part} without a collection means an app's own collections: only an app asks for it"
                    )))
                }
                _ => part.parse()?,
            };
            if let (Some(own), Scope::StorageRead(p) | Scope::StorageWrite(p)) = (&namespace, &scope) {
                if reaches_into_others(p, own) {
                    return Err(Error::invalid(format!(
                        "{}: collections named app-... belong to apps; ask for storage:read or storage:write for your own",
                        truncate(part)
                    )));
                }
            }
            set.insert(scope);
            if set.len() > MAX_SCOPES {
                return Err(Error::invalid(format!("at most {MAX_SCOPES} scopes")));
            }
        }
        Ok(ScopeSet(set))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The first held scope that covers `needed`, if any (the audit log records which one was used).
    pub fn permits(&self, needed: &Scope) -> Option<&Scope> {
        self.0.iter().find(|held| held.covers(needed))
    }

    /// True when every scope of `other` is covered by one of ours.
    pub fn covers_all(&self, other: &ScopeSet) -> bool {
        other.iter().all(|s| self.permits(s).is_some())
    }

    /// Every scope of either set (a grant that gains what a new consent allowed).
    pub fn union(&self, other: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.union(&other.0).cloned().collect())
    }

    /// Keeps only the scopes of `self` that `allowed` covers (what the user left ticked, or what
    /// the app registered).
    pub fn restricted_to(&self, allowed: &ScopeSet) -> ScopeSet {
        ScopeSet(self.0.iter().filter(|s| allowed.permits(s).is_some()).cloned().collect())
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        ScopeSet(iter.into_iter().collect())
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(s: &str) -> Collection {
        Collection::parse(s).unwrap()
    }

    #[test]
    fn broadest_names_every_kind_once_and_covers_it() {
        let kind = |s: &Scope| match s {
            Scope::StorageRead(_) => 0,
            Scope::StorageWrite(_) => 1,
            Scope::LlmChat => 2,
            Scope::LlmEmbed => 3,
            Scope::ChainRead => 4,
            Scope::ProfileRead => 5,
        };
        let kinds: Vec<usize> = Scope::broadest().iter().map(kind).collect();
        assert_eq!(kinds, (0..Scope::broadest().len()).collect::<Vec<_>>());
        assert!(Scope::broadest()[0].covers(&Scope::storage_read(&c("notes"))));
        assert!(Scope::broadest()[1].covers(&Scope::storage_write(&c("notes"))));
        let names: Vec<String> = Scope::broadest().iter().map(|s| s.to_string()).collect();
        assert_eq!(names[..2], ["storage:read:*", "storage:write:*"]);
    }

    #[test]
    fn parses_every_documented_form() {
        for s in [
            "storage:read:notes",
            "storage:write:notes",
            "storage:read:notes*",
            "storage:write:*",
            "llm:chat",
            "llm:embed",
            "chain:read",
            "profile:read",
        ] {
            assert_eq!(s.parse::<Scope>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn self_permission_words_are_synonyms_shown_once() {
        assert_eq!("ai:chat".parse::<Scope>().unwrap(), Scope::LlmChat);
        assert_eq!("blockchain:read".parse::<Scope>().unwrap(), Scope::ChainRead);
        let set = ScopeSet::parse("ai:chat llm:chat blockchain:read").unwrap();
        assert_eq!(set.to_string(), "llm:chat chain:read");
        assert!("ai:*".parse::<Scope>().is_err());
        assert!("AI:CHAT".parse::<Scope>().is_err());
    }

    #[test]
    fn bare_storage_scopes_are_the_apps_own_collections_only() {
        let app: AppId = "app_0123456789abcdef0123456789abcdef".parse().unwrap();
        let other: AppId = "app_fedcba9876543210fedcba9876543210".parse().unwrap();
        let set = ScopeSet::parse_for("storage:read storage:write ai:chat", &app).unwrap();
        assert_eq!(set.to_string(), "storage:read:app-0123456789abcdef* storage:write:app-0123456789abcdef* llm:chat");
        let own = c("app-0123456789abcdef-notes");
        assert!(set.permits(&Scope::storage_read(&own)).is_some());
        assert!(set.permits(&Scope::storage_write(&own)).is_some());
        for elsewhere in ["notes", "app-fedcba9876543210-notes", "diary"] {
            assert!(set.permits(&Scope::storage_read(&c(elsewhere))).is_none(), "{elsewhere}");
        }
        assert_eq!(set.iter().next().unwrap().describe(), "Read the records it keeps in your instance");
        // Naming its own namespace outright is the same scope; naming another's, or all of them, is refused.
        let explicit = ScopeSet::parse_for("storage:read:app-0123456789abcdef*", &app).unwrap();
        assert_eq!(explicit, ScopeSet::parse_for("storage:read", &app).unwrap());
        for theft in [
            format!("storage:read:{}*", app_namespace(&other)),
            format!("storage:write:{}-notes", app_namespace(&other)),
            "storage:read:app-*".to_owned(),
            "storage:read:app-01234567*".to_owned(),
        ] {
            assert!(ScopeSet::parse_for(&theft, &app).is_err(), "{theft}");
        }
        assert!(ScopeSet::parse_for("storage:read:app-0123456789abcdef-notes", &app).is_ok(), "one of its own");
        // Broad prefixes read the user's records, never what another app keeps for itself.
        let theirs = c(&format!("{}-notes", app_namespace(&other)));
        for broad in ["storage:read:*", "storage:read:a*", "storage:read:ap*", "storage:read:app*"] {
            let set = ScopeSet::parse_for(broad, &app).unwrap();
            assert!(set.permits(&Scope::storage_read(&theirs)).is_none(), "{broad}");
            assert!(set.permits(&Scope::storage_read(&c("apples"))).is_some(), "{broad}");
        }
        let all = ScopeSet::parse("storage:read:*").unwrap();
        assert!(!all.covers_all(&ScopeSet::parse_for("storage:read", &other).unwrap()), "* does not cover a namespace");
        // Without an app there is no namespace to mean.
        assert!(ScopeSet::parse("storage:read").is_err());
    }

    #[test]
    fn refuses_owner_powers_and_malformed_scopes() {
        for s in [
            "",
            "storage",
            "storage:read",
            "storage:read:",
            "storage:delete:notes",
            "storage:read:Notes",
            "storage:read:no*tes",
            "storage:read:notes**",
            "storage:read:../x",
            "storage:read:a/b",
            "audit",
            "audit:read",
            "backup",
            "grants",
            "account",
            "admin",
            "llm:*",
            "*",
            "LLM:CHAT",
            "storage:read:notes ",
            " llm:chat",
            "storage:read:_x*",
        ] {
            assert!(s.parse::<Scope>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn prefix_patterns_match_and_cover() {
        let notes_any: Scope = "storage:read:notes*".parse().unwrap();
        assert!(notes_any.covers(&Scope::storage_read(&c("notes"))));
        assert!(notes_any.covers(&Scope::storage_read(&c("notes.work"))));
        assert!(!notes_any.covers(&Scope::storage_read(&c("note"))));
        assert!(!notes_any.covers(&Scope::storage_write(&c("notes"))), "read never grants write");
        assert!(notes_any.covers(&"storage:read:notes.w*".parse().unwrap()));
        assert!(!notes_any.covers(&"storage:read:*".parse().unwrap()));
        let exact: Scope = "storage:read:notes".parse().unwrap();
        assert!(!exact.covers(&notes_any));
        let all: Scope = "storage:write:*".parse().unwrap();
        assert!(all.covers(&Scope::storage_write(&c("anything"))));
    }

    #[test]
    fn sets_intersect_as_consent_needs() {
        let registered = ScopeSet::parse("storage:read:notes* llm:chat").unwrap();
        let asked = ScopeSet::parse("storage:read:notes.work llm:chat chain:read").unwrap();
        let kept = asked.restricted_to(&registered);
        assert_eq!(kept.to_string(), "storage:read:notes.work llm:chat");
        assert!(!registered.covers_all(&asked));
        assert!(registered.covers_all(&kept));
        assert!(ScopeSet::parse("llm:chat audit").is_err());
        assert_eq!(ScopeSet::parse("  llm:chat  llm:chat ").unwrap().len(), 1);
    }

    fn arb_pattern() -> impl Strategy<Value = CollectionPattern> {
        prop_oneof![
            "[a-z0-9][a-z0-9._-]{0,20}".prop_map(|s| CollectionPattern::Exact(Collection::parse(&s).unwrap())),
            "([a-z0-9][a-z0-9._-]{0,20})?".prop_map(CollectionPattern::Prefix),
        ]
    }

    fn arb_scope() -> impl Strategy<Value = Scope> {
        prop_oneof![
            arb_pattern().prop_map(Scope::StorageRead),
            arb_pattern().prop_map(Scope::StorageWrite),
            Just(Scope::LlmChat),
            Just(Scope::LlmEmbed),
            Just(Scope::ChainRead),
            Just(Scope::ProfileRead),
        ]
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(scope in arb_scope()) {
            prop_assert_eq!(scope.to_string().parse::<Scope>().unwrap(), scope);
        }

        #[test]
        fn any_text_parses_or_errors_without_panicking(s in "\\PC{0,80}") {
            if let Ok(scope) = s.parse::<Scope>() {
                // Whatever parses is canonical: it prints back to the same text.
                prop_assert_eq!(scope.to_string(), s);
            }
        }

        #[test]
        fn covering_is_reflexive_and_transitive(a in arb_scope(), b in arb_scope(), x in arb_scope()) {
            prop_assert!(a.covers(&a));
            if a.covers(&b) && b.covers(&x) {
                prop_assert!(a.covers(&x));
            }
        }

        #[test]
        fn a_pattern_matches_what_it_covers(p in arb_pattern(), name in "[a-z0-9][a-z0-9._-]{0,24}") {
            let coll = Collection::parse(&name).unwrap();
            prop_assert_eq!(p.matches(&coll), p.covers(&CollectionPattern::Exact(coll.clone())));
        }

        #[test]
        fn restriction_never_widens(asked in proptest::collection::vec(arb_scope(), 0..6),
                                    allowed in proptest::collection::vec(arb_scope(), 0..6)) {
            let asked: ScopeSet = asked.into_iter().collect();
            let allowed: ScopeSet = allowed.into_iter().collect();
            let kept = asked.restricted_to(&allowed);
            prop_assert!(allowed.covers_all(&kept));
            prop_assert!(asked.covers_all(&kept));
        }
    }
}
