//! The OpenAPI document, generated from the handlers' annotations and served at `/openapi.json`.

use crate::routes::{accounts, admin, apps, assistant, llm, portability, storage};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "selfcloud", description = "A private cloud instance per user: accounts, scoped app access (OAuth 2.1 + PKCE), storage, audit, export and import. OAuth endpoints are described by /.well-known/oauth-authorization-server."),
    paths(
        accounts::create_account, accounts::create_session, accounts::delete_session, accounts::me, accounts::audit,
        accounts::change_password, accounts::recover, accounts::delete_account,
        portability::export, portability::import,
        apps::register, apps::list, apps::delete, apps::list_grants, apps::change_grant, apps::revoke_grant,
        storage::put, storage::get, storage::delete, storage::list,
        llm::models, llm::chat, llm::embeddings, llm::usage,
        assistant::chat, assistant::memories, assistant::memory, assistant::conversations, assistant::conversation,
        assistant::settings,
        admin::list_instances, admin::set_tier,
    ),
    modifiers(&BearerAuth)
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

pub async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
