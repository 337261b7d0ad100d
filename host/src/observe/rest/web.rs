//! The web page of a running job at `/`: one HTML page, one style sheet and one script,
//! compiled into the binary so that the page works on a machine without any network
//! beyond the job's own server. The script polls the REST API and draws the job graph,
//! the checkpoint history and a checkpoint's subtasks; it has no build step and loads
//! nothing from elsewhere.

use super::ApiError;
use axum::Router;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file: its name under `/web/`, its content type and its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("web/index.html"),
};

const ASSETS: [Asset; 3] = [
    INDEX,
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("web/style.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("web/app.js"),
    },
];

fn serve(asset: &Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            // The files change with the binary, and a page left open across a restart
            // on a newer one must not run an old script against a new API.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        asset.body,
    )
        .into_response()
}

async fn index() -> Response {
    serve(&INDEX)
}

async fn file(Path(name): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map(serve)
        .ok_or_else(|| {
            let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
            ApiError::not_found(format!(
                "there is no web file {name}; the page's files are {}",
                names.join(", ")
            ))
        })
}

/// The routes of the page, to merge into the API's router.
pub(super) fn web_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/web/{file}", get(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        let page = INDEX.body;
        for asset in &ASSETS[1..] {
            assert!(
                page.contains(&format!("/web/{}", asset.name)),
                "index.html does not load {}",
                asset.name
            );
        }
        for asset in &ASSETS {
            // The SVG namespace is a name, not an address the browser fetches.
            let body = asset.body.replace("http://www.w3.org/2000/svg", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{} names another server",
                asset.name
            );
        }
    }
}
