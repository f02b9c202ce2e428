//! What a part of an instance is: one declaration per part ([`Part`]), read by everything that
//! needs to know the part's API. The instance's router serves each declared [`Route`] behind the
//! access check its [`Access`] names; the gateway forwards exactly the declared routes (the same
//! check first), documents them in its OpenAPI document, and learns from them the answer each
//! promises, how long it may take and whether it is paid in LLM tokens; an import accepts the
//! internal collections the parts declare and no other. Nothing else lists a part's routes, so
//! nothing can drift from them.
//!
//! The rules over a declaration ([`Route::need`], [`resolve`]) are pure functions, tested here.

use crate::protocol::Need;
use axum::routing::MethodRouter;
use http::Method;
use selfcloud_core::{Collection, Error, RecordKey, Result, Scope};
use std::sync::Arc;

/// A part of an instance, declared once.
pub struct Part {
    /// Its name, also its OpenAPI tag.
    pub name: &'static str,
    /// One line on what it is, for the OpenAPI document.
    pub about: &'static str,
    pub routes: &'static [Route],
    /// The internal collections it keeps (`Collection::internal` names, without the `_`): in
    /// every export, and the only `_` names an import may hold.
    pub collections: &'static [&'static str],
    /// Internal collections holding secrets (an upstream provider's key): kept like the others,
    /// but in no export, and refused in an import.
    pub sealed: &'static [&'static str],
    /// The outside channels it needs, which control's broker hands the instance on request
    /// (`protocol::broker`): the only way anything of it reaches past the instance.
    pub channels: &'static [crate::protocol::broker::Channel],
}

/// Who may call a route.
#[derive(Debug)]
pub enum Access {
    /// The owner's own session, never an app.
    Owner,
    /// A scope (the owner holds every scope of their own instance).
    Scope(Scope),
    /// A record call on the path's `{collection}`: reads need `storage:read:<c>`, writes and
    /// deletes `storage:write:<c>`.
    Record,
    /// Control alone (`/system/…`): never forwarded, and no such route for anyone else.
    System,
}

/// What a route's request body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    Json,
    /// An export archive: an upload bounded by its size, not by the call's usual timeout.
    Archive,
}

/// What a route's success is, as the gateway lets it through (`gateway::untrusted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Json,
    /// JSON, or with `stream: true` server-sent events.
    JsonOrEvents,
    /// JSON, as 201: what was made.
    Created,
    /// An export archive, which the gateway names as a download.
    Archive,
    /// 204, no body.
    Empty,
}

/// An OpenAPI schema of a wire type, with the schemas it refers to.
pub type SchemaOf = fn() -> (String, Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>);
/// An OpenAPI parameter list of a wire type (a query).
pub type ParamsOf = fn() -> Vec<utoipa::openapi::path::Parameter>;

/// The schema of `T` for a route's documentation.
pub fn schema_of<T: utoipa::ToSchema>(
) -> (String, Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
    let mut all = vec![(T::name().into_owned(), <T as utoipa::PartialSchema>::schema())];
    T::schemas(&mut all);
    (T::name().into_owned(), all)
}

/// The query parameters of `T` for a route's documentation.
pub fn query_of<T: utoipa::IntoParams>() -> Vec<utoipa::openapi::path::Parameter> {
    T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query))
}

/// The handler of a route, made when the instance's router is.
pub(crate) type Serve = fn() -> MethodRouter<Arc<crate::service::Shared>>;

/// One route of a part: everything the instance, the gateway and the documentation know of it.
pub struct Route {
    pub method: Method,
    /// The path, with `{name}` for each parameter (axum's syntax).
    pub path: &'static str,
    pub access: Access,
    /// What it does, for the OpenAPI document: a first line, then more.
    pub doc: &'static str,
    pub body: Body,
    pub answer: Answer,
    /// Paid in LLM tokens: the gateway passes the caller's daily budget with the call.
    pub metered: bool,
    /// Reads the access log: the gateway writes what it has queued for the instance first, so
    /// the owner always sees their latest requests.
    pub reads_access_log: bool,
    /// The error statuses it may answer besides 401 (documentation).
    pub errors: &'static [u16],
    pub answer_schema: Option<SchemaOf>,
    pub query: Option<ParamsOf>,
    /// Request headers it reads, with what each means (documentation).
    pub headers: &'static [(&'static str, &'static str)],
    /// Headers its success carries, with what each means (documentation).
    pub answer_headers: &'static [(&'static str, &'static str)],
    pub(crate) serve: Serve,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

impl Route {
    /// A route answering JSON to a body-less request; the `with_…` calls say otherwise.
    pub(crate) const fn new(
        method: Method,
        path: &'static str,
        access: Access,
        doc: &'static str,
        serve: Serve,
    ) -> Self {
        Route {
            method,
            path,
            access,
            doc,
            body: Body::None,
            answer: Answer::Json,
            metered: false,
            reads_access_log: false,
            errors: &[],
            answer_schema: None,
            query: None,
            headers: &[],
            answer_headers: &[],
            serve,
        }
    }
    pub(crate) const fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }
    pub(crate) const fn answer(mut self, answer: Answer) -> Self {
        self.answer = answer;
        self
    }
    pub(crate) const fn metered(mut self) -> Self {
        self.metered = true;
        self
    }
    pub(crate) const fn reads_access_log(mut self) -> Self {
        self.reads_access_log = true;
        self
    }
    pub(crate) const fn errors(mut self, errors: &'static [u16]) -> Self {
        self.errors = errors;
        self
    }
    pub(crate) const fn answer_schema(mut self, schema: SchemaOf) -> Self {
        self.answer_schema = Some(schema);
        self
    }
    pub(crate) const fn query(mut self, query: ParamsOf) -> Self {
        self.query = Some(query);
        self
    }
    pub(crate) const fn headers(mut self, headers: &'static [(&'static str, &'static str)]) -> Self {
        self.headers = headers;
        self
    }
    pub(crate) const fn answer_headers(mut self, headers: &'static [(&'static str, &'static str)]) -> Self {
        self.answer_headers = headers;
        self
    }

    /// Whether the gateway forwards it (every route but control's own).
    pub fn is_public(&self) -> bool {
        !matches!(self.access, Access::System)
    }

    /// The names of its path parameters, in order.
    pub fn params(&self) -> impl Iterator<Item = &'static str> {
        self.path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
    }

    /// What a call of this route needs, given its path parameters (`param(name)`): a record
    /// route's names are parsed here, so a bad one is a 400 on both sides of the boundary.
    pub fn need<'a>(&self, param: impl Fn(&str) -> Option<&'a str>) -> Result<Need> {
        Ok(match &self.access {
            Access::Owner => Need::Owner,
            Access::System => Need::System,
            Access::Scope(scope) => Need::Scope(scope.clone()),
            Access::Record => {
                let collection = Collection::parse(
                    param("collection").ok_or_else(|| Error::internal("a record route names its collection"))?,
                )?;
                if let Some(key) = param("key") {
                    RecordKey::parse(key)?;
                }
                Need::record(&self.method, &collection)
            }
        })
    }
}

/// A request's place among the declared routes.
#[derive(Debug)]
pub enum Resolved<'r> {
    /// The route, with its path parameters percent-decoded.
    Found(&'r Route, Vec<(&'static str, String)>),
    /// A declared path, not with this method.
    WrongMethod,
    NotFound,
}

/// Finds the route of `method` and `path` (no query) among `routes`.
pub fn resolve<'r>(routes: impl IntoIterator<Item = &'r Route>, method: &Method, path: &str) -> Result<Resolved<'r>> {
    let mut path_known = false;
    for route in routes {
        let Some(params) = matches(route.path, path)? else { continue };
        if route.method == *method || (*method == Method::HEAD && route.method == Method::GET) {
            return Ok(Resolved::Found(route, params));
        }
        path_known = true;
    }
    Ok(if path_known { Resolved::WrongMethod } else { Resolved::NotFound })
}

/// The parameters of `path` under `template`, when it matches: a parameter is one whole,
/// non-empty segment, percent-decoded (a bad encoding is a 400).
fn matches(template: &'static str, path: &str) -> Result<Option<Vec<(&'static str, String)>>> {
    let (mut want, mut have) = (template.split('/'), path.split('/'));
    let mut params = Vec::new();
    loop {
        match (want.next(), have.next()) {
            (None, None) => return Ok(Some(params)),
            (Some(w), Some(h)) => match w.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                Some(name) if !h.is_empty() => {
                    let value = percent_encoding::percent_decode_str(h)
                        .decode_utf8()
                        .map_err(|_| Error::invalid(format!("the path's {name} is not UTF-8")))?;
                    params.push((name, value.into_owned()));
                }
                None if w == h => {}
                _ => return Ok(None),
            },
            _ => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfcloud_core::ErrorCode;

    fn unserved() -> MethodRouter<Arc<crate::service::Shared>> {
        MethodRouter::new()
    }

    static ROUTES: [Route; 3] = [
        Route::new(Method::GET, "/v1/storage/{collection}", Access::Record, "", unserved),
        Route::new(Method::PUT, "/v1/storage/{collection}/{key}", Access::Record, "", unserved),
        Route::new(Method::GET, "/v1/export", Access::Owner, "", unserved),
    ];

    fn found(method: Method, path: &str) -> (&'static str, Vec<(&'static str, String)>) {
        match resolve(&ROUTES, &method, path).unwrap() {
            Resolved::Found(route, params) => (route.path, params),
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn a_path_finds_its_route_and_its_decoded_parameters() {
        assert_eq!(found(Method::GET, "/v1/export"), ("/v1/export", vec![]));
        assert_eq!(found(Method::HEAD, "/v1/export").0, "/v1/export");
        let (path, params) = found(Method::PUT, "/v1/storage/notes/a%20b");
        assert_eq!(path, "/v1/storage/{collection}/{key}");
        assert_eq!(params, [("collection", "notes".to_owned()), ("key", "a b".to_owned())]);
        assert!(matches!(resolve(&ROUTES, &Method::POST, "/v1/export").unwrap(), Resolved::WrongMethod));
        for nowhere in ["/v1/storage", "/v1/storage/", "/v1/storage/notes/a/b", "/v1/export/", "/v1/exports", ""] {
            assert!(matches!(resolve(&ROUTES, &Method::GET, nowhere).unwrap(), Resolved::NotFound), "{nowhere}");
        }
        let bad = resolve(&ROUTES, &Method::GET, "/v1/storage/%ff").unwrap_err();
        assert_eq!(bad.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn a_record_route_needs_the_scope_of_its_collection_and_method() {
        let params = |given: &'static [(&'static str, &'static str)]| {
            move |name: &str| given.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
        };
        let read = ROUTES[0].need(params(&[("collection", "notes")])).unwrap();
        assert_eq!(read, Need::Scope("storage:read:notes".parse::<Scope>().unwrap()));
        let write = ROUTES[1].need(params(&[("collection", "notes"), ("key", "a")])).unwrap();
        assert_eq!(write, Need::Scope("storage:write:notes".parse::<Scope>().unwrap()));
        // A bad name is the client's error, before any access is weighed.
        for bad in [
            &[("collection", "Notes"), ("key", "a")][..],
            &[("collection", "_ledger"), ("key", "a")],
            &[("collection", "notes"), ("key", "")],
        ] {
            assert_eq!(ROUTES[1].need(params(bad)).unwrap_err().code, ErrorCode::InvalidRequest, "{bad:?}");
        }
        assert_eq!(ROUTES[2].need(|_| None).unwrap(), Need::Owner);
        assert_eq!(ROUTES[1].params().collect::<Vec<_>>(), ["collection", "key"]);
    }
}
