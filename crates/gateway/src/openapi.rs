//! The OpenAPI document served at `/openapi.json`: the gateway's own routes from their handlers'
//! annotations, and the instance's routes from its parts' declarations (`selfcloud_instance::part`),
//! the same ones the gateway forwards, so the document lists exactly what is served.

use crate::routes::{accounts, admin, apps, ErrorBody};
use selfcloud_instance::part::{Access, Answer, Body, Part, Route};
use selfcloud_instance::service::PARTS;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(title = "selfcloud", description = "A private cloud instance per user: accounts, scoped app access (OAuth 2.1 + PKCE), storage, the private LLM and assistant, audit, export and import. OAuth endpoints are described by /.well-known/oauth-authorization-server."),
    paths(
        accounts::create_account, accounts::create_session, accounts::delete_session, accounts::me,
        accounts::change_password, accounts::recover, accounts::delete_account,
        apps::register, apps::list, apps::delete, apps::list_grants, apps::change_grant, apps::revoke_grant,
        admin::list_instances, admin::set_tier,
    ),
    modifiers(&BearerAuth, &DeclaredParts)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The instance's public routes, each documented from its declaration.
struct DeclaredParts;

impl Modify for DeclaredParts {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut errors = vec![(ErrorBody::name().into_owned(), <ErrorBody as utoipa::PartialSchema>::schema())];
        ErrorBody::schemas(&mut errors);
        components.schemas.extend(errors);
        for part in PARTS {
            for route in part.routes.iter().filter(|r| r.is_public()) {
                let operation = operation(part, route, &mut components.schemas);
                openapi.paths.add_path_operation(route.path, vec![http_method(route)], operation);
            }
        }
    }
}

const JSON: &str = "application/json";

type Schemas = std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>>;

fn operation(part: &Part, route: &Route, schemas: &mut Schemas) -> utoipa::openapi::path::Operation {
    let (summary, description) = route.doc.split_once(". ").map_or((route.doc, None), |(s, d)| (s, Some(d)));
    let mut op = OperationBuilder::new()
        .tag(part.name)
        .operation_id(Some(operation_id(route)))
        .summary(Some(summary.trim_end_matches('.')))
        .description(description)
        .security(SecurityRequirement::new("bearer", scopes(route)));
    for name in route.params() {
        let param = ParameterBuilder::new().name(name).parameter_in(ParameterIn::Path).required(Required::True);
        op = op.parameter(param.schema(Some(<String as utoipa::PartialSchema>::schema())));
    }
    for param in route.query.map(|q| q()).unwrap_or_default() {
        op = op.parameter(param);
    }
    for (name, about) in route.headers {
        let param = ParameterBuilder::new().name(*name).parameter_in(ParameterIn::Header).description(Some(*about));
        op = op.parameter(param.schema(Some(<String as utoipa::PartialSchema>::schema())));
    }
    let request = match route.body {
        Body::None => None,
        Body::Json => Some((JSON, "A JSON value")),
        Body::Archive => Some(("application/x-tar", "An export archive")),
    };
    if let Some((content_type, about)) = request {
        let body = RequestBodyBuilder::new().description(Some(about)).required(Some(Required::True));
        op = op.request_body(Some(body.content(content_type, Content::new(None::<Ref>)).build()));
    }
    let answer = route.answer_schema.map(|of| {
        let (name, found) = of();
        schemas.extend(found);
        Ref::from_schema_name(name)
    });
    let (status, mut success) = match route.answer {
        Answer::Empty => ("204", ResponseBuilder::new().description("Done")),
        Answer::Json => ("200", ResponseBuilder::new().description("The answer").content(JSON, Content::new(answer))),
        Answer::Created => ("201", ResponseBuilder::new().description("Made").content(JSON, Content::new(answer))),
        Answer::JsonOrEvents => (
            "200",
            ResponseBuilder::new()
                .description("The answer, or with `stream: true` server-sent events")
                .content(JSON, Content::new(answer))
                .content("text/event-stream", Content::new(None::<Ref>)),
        ),
        Answer::Archive => (
            "200",
            ResponseBuilder::new().description("The archive").content("application/x-tar", Content::new(None::<Ref>)),
        ),
    };
    for (name, about) in route.answer_headers {
        let header = HeaderBuilder::new().schema(<String as utoipa::PartialSchema>::schema()).description(Some(*about));
        success = success.header(*name, header.build());
    }
    op = op.response(status, success.build());
    for status in std::iter::once(&401).chain(route.errors) {
        let error = ResponseBuilder::new()
            .description(error_description(*status))
            .content(JSON, Content::new(Some(Ref::from_schema_name(ErrorBody::name()))));
        op = op.response(status.to_string(), error.build());
    }
    op.build()
}

/// A name for generated clients: the method and the path's fixed words, `get_storage_collection_key`.
fn operation_id(route: &Route) -> String {
    let words = route.path.split('/').filter(|w| !w.is_empty() && *w != "v1").map(|w| w.trim_matches(['{', '}']));
    std::iter::once(route.method.as_str().to_ascii_lowercase())
        .chain(words.map(|w| w.replace('-', "_")))
        .collect::<Vec<_>>()
        .join("_")
}

/// The scopes an app's token needs for the route (none: the owner's alone).
fn scopes(route: &Route) -> Vec<String> {
    match &route.access {
        Access::Scope(scope) => vec![scope.to_string()],
        Access::Record if route.method == axum::http::Method::GET => vec!["storage:read:{collection}".into()],
        Access::Record => vec!["storage:write:{collection}".into()],
        Access::Owner | Access::System => vec![],
    }
}

fn http_method(route: &Route) -> HttpMethod {
    use axum::http::Method;
    match route.method {
        Method::GET => HttpMethod::Get,
        Method::PUT => HttpMethod::Put,
        Method::POST => HttpMethod::Post,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        _ => unreachable!("parts declare GET, PUT, POST, DELETE and PATCH routes"),
    }
}

fn error_description(status: u16) -> String {
    axum::http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error").to_owned()
}

pub async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
