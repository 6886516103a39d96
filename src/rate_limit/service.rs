//! [`RateLimit`]: the middleware service.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::config::Config;
use super::decision::{DecisionSource, RateLimitDecision};
use super::future::ResponseFuture;
use super::layer::MissingKey;
use super::plan::Outcome;
use super::response::rejection;
use super::store::{Ask, Question};
use crate::body::ResponseBody;
use crate::key::{KeyError, RequestView};
use crate::problem::{bad_request, is_grpc};

/// Rate-limits requests to the inner service; built by
/// [`RateLimitLayer`](super::RateLimitLayer).
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> RateLimit<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let cfg = &self.config;
        if cfg.skip.is_some() && cfg.skips(&RequestView::new(&req)) {
            cfg.plans[0].count(Outcome::Skipped);
            return ResponseFuture::pass(self.inner.call(req));
        }
        cfg.mark_counted(req.extensions_mut());
        let grpc = is_grpc(req.headers());
        let view = RequestView::new(&req);
        let plan = cfg.plan_of(&view).clone();
        let key = match cfg.key.extract(&view) {
            Ok(key) => key,
            Err(KeyError::Invalid(why)) => {
                plan.count(Outcome::BadKey);
                tracing::debug!(%why, "rate limit: invalid client key");
                return ResponseFuture::respond(bad_request(
                    grpc,
                    &format!("invalid client key: {why}"),
                ));
            }
            Err(KeyError::Missing) => match &cfg.missing_key {
                MissingKey::Fallback(key) => key.clone(),
                MissingKey::Allow => {
                    let d = RateLimitDecision::without_policies(true, DecisionSource::NoKey);
                    plan.count_decision(&cfg.scope, &d, cfg.shadow, None);
                    return ResponseFuture::call(self.inner.call(req), d, plan);
                }
                MissingKey::Reject => {
                    plan.count(Outcome::NoKey);
                    let looked_for = cfg.key.describe();
                    cfg.warn_missing_key(&looked_for);
                    return ResponseFuture::respond(bad_request(
                        grpc,
                        &format!("the request carries no client key for the rate limit; looked for {looked_for}"),
                    ));
                }
            },
        };
        let cost = cfg.cost.as_ref().map_or(1, |c| c(&view));
        if cost > plan.max_cost {
            let d = RateLimitDecision::without_policies(false, DecisionSource::CostTooHigh);
            plan.count_decision(&cfg.scope, &d, cfg.shadow, None);
            tracing::debug!(cost, max = plan.max_cost, "rate limit: cost above capacity");
            if !cfg.shadow {
                return ResponseFuture::respond(rejection(cfg, &plan, d, grpc));
            }
            return ResponseFuture::call(self.inner.call(req), d, plan);
        }
        if let Some(answer) = plan.denials.as_ref().and_then(|d| d.check(&key, cost)) {
            let d = RateLimitDecision::from_answer(&plan.meta, &answer, DecisionSource::Remembered);
            plan.count_decision(&cfg.scope, &d, cfg.shadow, None);
            if !cfg.shadow {
                return ResponseFuture::respond(rejection(cfg, &plan, d, grpc));
            }
            return ResponseFuture::call(self.inner.call(req), d, plan);
        }
        let question = Question {
            scope: cfg.scope.clone(),
            key,
            cost,
            policies: plan.policies.clone(),
            ask: Ask::Check,
        };
        let check = match &cfg.leases {
            Some(leases) => leases.check(&question, plan.max_cost),
            None => cfg.store.check(&question),
        };
        // The readied service goes into the future; a fresh clone stays here.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::check(check, req, inner, cfg.clone(), plan, question, grpc)
    }
}
