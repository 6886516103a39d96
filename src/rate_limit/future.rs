//! [`ResponseFuture`]: asks the store, then calls the inner service or answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::config::Config;
use super::decision::{DecisionSource, RateLimitDecision};
use super::layer::FailurePolicy;
use super::plan::PlanSet;
use super::response::{rejection, unavailable};
use super::store::{Answer, Question};
use crate::body::ResponseBody;
use crate::error::StoreError;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Checking {
            check: BoxFuture<'static, Result<Answer, StoreError>>,
            pending: Option<Pending<S, B>>,
        },
        Calling {
            #[pin]
            fut: S::Future,
            // The decision and the plan whose fields the response gets;
            // none for a skipped request.
            decision: Option<(RateLimitDecision, Arc<PlanSet>)>,
        },
        Respond {
            res: Option<Response<Bytes>>,
        },
    }
}

struct Pending<S, B> {
    req: Request<B>,
    inner: S,
    config: Arc<Config>,
    plan: Arc<PlanSet>,
    question: Question,
    grpc: bool,
    asked: Instant,
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Checking { .. } => "checking",
            State::Calling { .. } => "calling",
            State::Respond { .. } => "responding",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn check(
        check: BoxFuture<'static, Result<Answer, StoreError>>,
        req: Request<B>,
        inner: S,
        config: Arc<Config>,
        plan: Arc<PlanSet>,
        question: Question,
        grpc: bool,
    ) -> Self {
        Self {
            state: State::Checking {
                check,
                pending: Some(Pending {
                    req,
                    inner,
                    config,
                    plan,
                    question,
                    grpc,
                    asked: Instant::now(),
                }),
            },
        }
    }

    pub(crate) fn call(fut: S::Future, decision: RateLimitDecision, plan: Arc<PlanSet>) -> Self {
        Self {
            state: State::Calling {
                fut,
                decision: Some((decision, plan)),
            },
        }
    }

    /// A skipped request: passed on, no decision, no fields.
    pub(crate) fn pass(fut: S::Future) -> Self {
        Self {
            state: State::Calling {
                fut,
                decision: None,
            },
        }
    }

    pub(crate) fn respond(res: Response<Bytes>) -> Self {
        Self {
            state: State::Respond { res: Some(res) },
        }
    }
}

/// What to do after the store answered (or failed).
enum Next {
    Call(RateLimitDecision),
    Respond(Response<Bytes>),
}

fn decide<S, B>(p: &Pending<S, B>, result: Result<Answer, StoreError>) -> Next {
    let store = p.asked.elapsed();
    let next = decide_after(p, result);
    let d = match &next {
        Next::Call(d) => Some(d),
        Next::Respond(res) => res.extensions().get::<RateLimitDecision>(),
    };
    if let Some(d) = d {
        p.plan
            .count_decision(&p.config.scope, d, p.config.shadow, Some(store));
    }
    next
}

fn decide_after<S, B>(p: &Pending<S, B>, result: Result<Answer, StoreError>) -> Next {
    let cfg = &p.config;
    let (answer, source) = match result {
        Ok(answer) if answer.local => (answer, DecisionSource::Lease),
        Ok(answer) => (answer, DecisionSource::Store),
        Err(e) => {
            warn_store_failure(cfg, &e);
            match cfg.on_failure {
                FailurePolicy::Open => {
                    return Next::Call(RateLimitDecision::without_policies(
                        true,
                        DecisionSource::FailOpen,
                    ))
                }
                FailurePolicy::Closed => {
                    let d = RateLimitDecision::without_policies(false, DecisionSource::FailClosed);
                    return Next::Respond(unavailable(d, p.grpc));
                }
                FailurePolicy::Local => (
                    cfg.fallback.decide(&p.question),
                    DecisionSource::LocalFallback,
                ),
            }
        }
    };
    let decision = RateLimitDecision::from_answer(&p.plan.meta, &answer, source);
    if answer.allowed {
        return Next::Call(decision);
    }
    if let Some(denials) = &p.plan.denials {
        denials.remember(&p.question.key, p.question.cost, &answer);
    }
    if cfg.shadow {
        tracing::info!(policies = ?decision.policies, "rate limit (shadow): would reject");
        return Next::Call(decision);
    }
    Next::Respond(rejection(cfg, &p.plan, decision, p.grpc))
}

fn warn_store_failure(cfg: &Config, e: &StoreError) {
    let then = match cfg.on_failure {
        FailurePolicy::Open => "let the request through (fail open)",
        FailurePolicy::Closed => "answered 503 (fail closed)",
        FailurePolicy::Local => "decided in process (local fallback)",
    };
    cfg.warned
        .store_failed("rate limit", &cfg.scope, "a decision", then, e);
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let next_state = match this.state.as_mut().project() {
                StateProj::Checking { check, pending } => {
                    let result = ready!(check.as_mut().poll(cx));
                    let Some(p) = pending.take() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    match decide(&p, result) {
                        Next::Respond(res) => State::Respond { res: Some(res) },
                        Next::Call(decision) => {
                            let Pending {
                                req,
                                mut inner,
                                plan,
                                ..
                            } = p;
                            State::Calling {
                                fut: inner.call(req),
                                decision: Some((decision, plan)),
                            }
                        }
                    }
                }
                StateProj::Calling { fut, decision } => {
                    let res = ready!(fut.poll(cx))?;
                    let mut res = res.map(ResponseBody::inner);
                    if let Some((d, plan)) = decision.take() {
                        plan.headers.apply(res.headers_mut(), &d, false);
                        res.extensions_mut().insert(d);
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Respond { res } => {
                    let res = res.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(res.map(ResponseBody::full)));
                }
            };
            this.state.set(next_state);
        }
    }
}
