//! `PolicySet` for Python: compile selectors once, match requests with primitives.

use std::net::IpAddr;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
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
        let attrs = [
            key,
            team,
            user,
            model,
            resolved_model,
            provider,
            endpoint,
            ip,
        ];
        self.find(attrs, &tags, &params)
    }

    /// `matches` for the request path: the attributes positionally, as the tuple `(key, team,
    /// user, model, resolved_model, provider, endpoint, ip)` (the partition attributes' order,
    /// which `Admitter.admit` takes too), and the indices as a tuple (hashable: the engine keys
    /// what it works out per set of matched policies by it). Keyword arguments cost more to
    /// take than the matching itself does.
    fn match_attrs<'py>(
        &self,
        py: Python<'py>,
        attrs: &Bound<'py, PyTuple>,
        tags: &Bound<'py, PyAny>,
        params: &Bound<'py, PyList>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        // Read item by item: the generic sequence conversion costs more than the matching.
        let tags = tag_list(tags)?;
        let mut values: Vec<Option<f64>> = Vec::with_capacity(params.len());
        for value in params.iter() {
            values.push(value.extract()?);
        }
        let items = attribute_items(attrs)?;
        let texts = attribute_texts(&items)?;
        PyTuple::new(py, self.find(texts, &tags, &values)?)
    }
}

impl PolicySet {
    /// How many policies' selectors it holds.
    pub(crate) fn inner_len(&self) -> usize {
        self.inner.len()
    }

    /// The numeric parameters the selectors use, in the order `find` takes their values.
    pub(crate) fn param_names(&self) -> &[String] {
        self.inner.params()
    }

    /// The matching policies for `attrs` in `PARTITION_ATTRIBUTES` order (the last is the IP).
    pub(crate) fn find(
        &self,
        attrs: [Option<&str>; 8],
        tags: &[String],
        params: &[Option<f64>],
    ) -> PyResult<Vec<u32>> {
        let [key, team, user, model, resolved_model, provider, endpoint, ip] = attrs;
        let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        let request = Request {
            strings: [key, team, user, model, resolved_model, provider, endpoint],
            tags: &tag_refs,
            ip: parse_ip(ip)?,
            params,
        };
        Ok(self.inner.matches(&request))
    }
}

/// A request's tags, as a tuple or any sequence of strings.
pub(crate) fn tag_list(tags: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    match tags.cast::<PyTuple>() {
        Ok(tuple) => tuple.iter().map(|t| t.extract()).collect(),
        Err(_) => tags.extract(),
    }
}

/// The items of the attributes tuple `(key, team, user, model, resolved_model, provider,
/// endpoint, ip)`, checked to be eight (`attribute_texts` reads them).
pub(crate) fn attribute_items<'py>(
    attrs: &Bound<'py, PyTuple>,
) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if attrs.len() != 8 {
        return Err(PyValueError::new_err(format!(
            "expected 8 attributes, got {}",
            attrs.len()
        )));
    }
    Ok(attrs.iter().collect())
}

/// The attributes as text (`None` for an absent one).
pub(crate) fn attribute_texts<'a>(items: &'a [Bound<'_, PyAny>]) -> PyResult<[Option<&'a str>; 8]> {
    let mut texts: [Option<&str>; 8] = [None; 8];
    for (text, item) in texts.iter_mut().zip(items) {
        if !item.is_none() {
            *text = Some(item.cast::<PyString>()?.to_str()?);
        }
    }
    Ok(texts)
}

fn parse_ip(ip: Option<&str>) -> PyResult<Option<IpAddr>> {
    ip.map(|text| {
        text.parse::<IpAddr>()
            .map_err(|_| PyValueError::new_err(format!("invalid IP address `{text}`")))
    })
    .transpose()
}
