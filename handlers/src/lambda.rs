//! AWS Lambda: the same router, served through `lambda_http` when `AWS_LAMBDA_RUNTIME_API` is set.

use crate::state::AppState;

pub fn is_lambda() -> bool {
    std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()
}

pub async fn serve(state: AppState) -> Result<(), lambda_http::Error> {
    lambda_http::run(crate::router(state)).await
}
