//! `PolicySet` for Python: compile selectors once, match requests with primitives.

use std::net::IpAddr;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tollway_core::policy::{self as core, Condition, Request, Value};

use crate::errors::policy_error;

/// A condition's value as Python gives it: a string, a list of strings, or a number.
#[derive(FromPyObject)]
enum PyValue {
    Str(String),
    List(Vec<String>),
    Num(f64),
}

/// The compiled selectors of every policy; `matches` returns the indices that apply.
#[pyclass(frozen, module = "tollway._native")]
pub struct PolicySet {
    inner: core::PolicySet,
}

#[pymethods]
impl PolicySet {
    /// `selectors[i]` is policy `i`'s list of `(attribute, operator, value, negate)` conditions.
    #[new]
    fn new(selectors: Vec<Vec<(String, String, PyValue, bool)>>) -> PyResult<Self> {
        let selectors: Vec<Vec<Condition>> = selectors
            .into_iter()
            .map(|conditions| {
                conditions
                    .into_iter()
                    .map(|(attribute, operator, value, negate)| Condition {
                        attribute,
                        operator,
                        value: match value {
                            PyValue::Str(s) => Value::Str(s),
                            PyValue::List(l) => Value::List(l),
                            PyValue::Num(n) => Value::Num(n),
                        },
                        negate,
                    })
                    .collect()
            })
            .collect();
        Ok(Self {
            inner: core::PolicySet::new(&selectors).map_err(policy_error)?,
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The numeric parameters the selectors use, in the order `matches` takes their values.
    #[getter]
    fn params(&self) -> Vec<String> {
        self.inner.params().to_vec()
    }

    /// Indices of the policies whose selectors match this request, ascending.
    #[pyo3(signature = (*, key=None, team=None, user=None, model=None, resolved_model=None, provider=None, endpoint=None, ip=None, tags=Vec::new(), params=Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn matches(
        &self,
        key: Option<&str>,
        team: Option<&str>,
        user: Option<&str>,
        model: Option<&str>,
        resolved_model: Option<&str>,
        provider: Option<&str>,
        endpoint: Option<&str>,
        ip: Option<&str>,
        tags: Vec<String>,
        params: Vec<Option<f64>>,
    ) -> PyResult<Vec<u32>> {
        let ip = match ip {
            Some(text) => Some(
                text.parse::<IpAddr>()
                    .map_err(|_| PyValueError::new_err(format!("invalid IP address `{text}`")))?,
            ),
            None => None,
        };
        let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        let request = Request {
            strings: [key, team, user, model, resolved_model, provider, endpoint],
            tags: &tag_refs,
            ip,
            params: &params,
        };
        Ok(self.inner.matches(&request))
    }
}
