//! `POST /v1/imports` (products with image URLs, as JSON or CSV) and
//! `GET /v1/imports/{id}`.
//!
//! An import is validated whole (every problem reported, nothing stored if any), then its
//! batch, products, images and photos are committed in one transaction, and only then are
//! the photos' jobs put on the stream; workers download, process and store each image.

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use paperclip::actix::{api_v2_operation, web::Json, AcceptedJson, OperationModifier};
use paperclip::v2::models::{DefaultOperationRaw, DefaultSchemaRaw};
use uuid::Uuid;

use super::auth::Caller;
use super::error::ApiError;
use super::import_body::{self, ImportRequest, ProductInput};
use super::models::{
    photo_url, product_url, ImageCounts, ImportResponse, ImportView, ImportedImage,
    ImportedProduct, ProductCounts, StateCounts,
};
use super::upload::{first_answer, lost_race, publish_accepted, IdempotencyKey};
use super::AppState;
use crate::db::{self, imports::ProductSpec};
use crate::queue::Lane;

/// The media type of a CSV import.
const TEXT_CSV: &str = "text/csv";

/// The import body, read whole (up to `import.max_body_bytes`) and parsed by its
/// Content-Type: `application/json` or `text/csv`.
pub struct ImportBody(Vec<ProductInput>);

impl FromRequest for ImportBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<web::Data<AppState>>()
            .map_or(0, |s| s.config.import.max_body_bytes);
        let kind = req
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .map(|m| m.essence_str().to_owned());
        let mut payload = payload.take();
        Box::pin(async move {
            let csv = match kind.as_deref() {
                Some("application/json") => false,
                Some(TEXT_CSV) => true,
                _ => {
                    return Err(ApiError::BadRequest {
                        code: "bad_content_type",
                        message: "send the import as application/json or text/csv".into(),
                    })
                }
            };
            let mut body = bytes::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| ApiError::BadRequest {
                    code: "bad_body",
                    message: format!("the body could not be read: {e}"),
                })?;
                if body.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge {
                        code: "body_too_large",
                        message: format!("the import body is over {limit} bytes"),
                    });
                }
                body.extend_from_slice(&chunk);
            }
            let products = if csv {
                import_body::from_csv(&body)?
            } else {
                import_body::from_json(&body)?
            };
            Ok(ImportBody(products))
        })
    }
}

impl paperclip::v2::schema::Apiv2Schema for ImportBody {}

impl OperationModifier for ImportBody {
    fn update_parameter(op: &mut DefaultOperationRaw) {
        // The JSON body; the CSV form is added to the document in `openapi::amend`.
        <Json<ImportRequest> as OperationModifier>::update_parameter(op);
    }

    fn update_definitions(map: &mut std::collections::BTreeMap<String, DefaultSchemaRaw>) {
        <Json<ImportRequest> as OperationModifier>::update_definitions(map);
    }
}

/// Import products
///
/// Products with image URLs, as JSON (`{"products": [{"external_id", "name", "images"}]}`)
/// or as CSV (`external_id,name,images` with space-separated URLs, or one `image_N` column
/// per URL). Every item is validated first: any problem refuses the whole import (422
/// `invalid_items`, each problem with its index and field). Answers 202 with the import's
/// id and each product's and image's id; workers then download and process the images.
/// A product whose `external_id` the key's owner imported before is updated, not
/// duplicated; its images whose URLs are unchanged keep their photos. With an
/// `Idempotency-Key`, a repeated request gets the first answer and changes nothing.
#[api_v2_operation(tags(Imports))]
pub async fn create_import(
    state: web::Data<AppState>,
    caller: Caller,
    idempotency: IdempotencyKey,
    body: ImportBody,
) -> Result<AcceptedJson<ImportResponse>, ApiError> {
    let ImportBody(products) = body;
    let key = idempotency.0;
    if let Some(key) = &key {
        if let Some(first) = first_answer(&state, caller.owner, key).await? {
            return Ok(AcceptedJson(first));
        }
    }
    import_body::validate(&products, &state.config.import, &state.fetch_rules)?;
    let specs: Vec<ProductSpec> = products
        .into_iter()
        .map(|p| ProductSpec {
            external_id: p.external_id,
            name: p.name,
            images: p.images,
        })
        .collect();
    let import_id = Uuid::now_v7();
    let recorded = async {
        let mut conn = db::conn(&state.pool).await?;
        db::imports::record(
            &mut conn,
            caller.owner,
            import_id,
            &specs,
            key.as_deref(),
            state.config.quotas,
            |r| serde_json::to_value(answer(import_id, r)).unwrap_or_default(),
        )
        .await
    }
    .await;
    let (recorded, _) = match recorded {
        Ok(r) => r,
        Err(e) => {
            // A concurrent request with the same key won: answer as it did.
            return match lost_race(&state, caller.owner, key.as_deref(), &e).await? {
                Some(first) => Ok(AcceptedJson(first)),
                None => Err(e.into()),
            };
        }
    };
    publish_accepted(&state, Lane::Bulk, import_id, &recorded.new_photos).await;
    tracing::info!(
        import_id = %import_id,
        products = recorded.products.len(),
        new_images = recorded.new_photos.len(),
        "import accepted"
    );
    Ok(AcceptedJson(answer(import_id, &recorded)))
}

fn answer(import_id: Uuid, recorded: &db::imports::Recorded) -> ImportResponse {
    ImportResponse {
        import_id,
        url: import_url(import_id),
        products: recorded
            .products
            .iter()
            .map(|p| ImportedProduct {
                id: p.id,
                external_id: p.external_id.clone(),
                created: p.created,
                url: product_url(p.id),
                images: p
                    .images
                    .iter()
                    .map(|(source, id, state)| ImportedImage {
                        id: *id,
                        state: state.clone(),
                        url: photo_url(*id),
                        source_url: source.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub fn import_url(id: Uuid) -> String {
    format!("/v1/imports/{id}")
}

/// Get an import
///
/// Its products counted by status (and its images by state), and the overall state they
/// add up to.
#[api_v2_operation(tags(Imports))]
pub async fn get_import(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<Uuid>,
) -> Result<Json<ImportView>, ApiError> {
    let id = path.into_inner();
    let mut conn = db::conn(&state.pool).await?;
    let created_at = db::imports::get(&mut conn, caller.owner, id)
        .await?
        .ok_or(ApiError::NotFound("import"))?;
    let (products, images) = db::imports::counts(&mut conn, id).await?;
    let products = ProductCounts::from_rows(&products);
    Ok(Json(ImportView {
        id,
        state: products.overall().to_owned(),
        products,
        images: ImageCounts::from(StateCounts::from_rows(&images)),
        created_at,
        products_url: format!("/v1/products?import={id}"),
    }))
}
