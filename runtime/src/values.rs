//! Numeric arguments and results of exported functions, as text and JSON.

use wasmtime::{Val, ValType};

use crate::error::{Error, Result};

/// Parses text arguments by the function's parameter types.
pub fn parse_args(export: &str, params: &[ValType], args: &[String]) -> Result<Vec<Val>> {
    if params.len() != args.len() {
        let sig: Vec<String> = params.iter().map(type_name).collect();
        return Err(Error::BadArguments {
            export: export.into(),
            message: format!(
                "it takes {} argument(s) ({}), {} given",
                params.len(),
                sig.join(", "),
                args.len()
            ),
        });
    }
    params
        .iter()
        .zip(args)
        .enumerate()
        .map(|(i, (ty, a))| {
            parse_one(ty, a.trim()).ok_or_else(|| Error::BadArguments {
                export: export.into(),
                message: format!("argument {} `{a}` is not a valid {}", i + 1, type_name(ty)),
            })
        })
        .collect()
}

fn parse_int(s: &str) -> Option<i128> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i128::from_str_radix(&hex.replace('_', ""), 16).ok()?
    } else {
        digits.replace('_', "").parse::<i128>().ok()?
    };
    Some(if neg { -v } else { v })
}

fn parse_one(ty: &ValType, s: &str) -> Option<Val> {
    match ty {
        // Integers accept their signed and unsigned ranges.
        ValType::I32 => {
            let v = parse_int(s)?;
            (i32::MIN as i128..=u32::MAX as i128)
                .contains(&v)
                .then_some(Val::I32(v as u32 as i32))
        }
        ValType::I64 => {
            let v = parse_int(s)?;
            (i64::MIN as i128..=u64::MAX as i128)
                .contains(&v)
                .then_some(Val::I64(v as u64 as i64))
        }
        ValType::F32 => Some(Val::F32(s.parse::<f32>().ok()?.to_bits())),
        ValType::F64 => Some(Val::F64(s.parse::<f64>().ok()?.to_bits())),
        _ => None,
    }
}

/// A type's name as in the text format.
pub fn type_name(ty: &ValType) -> String {
    match ty {
        ValType::I32 => "i32".into(),
        ValType::I64 => "i64".into(),
        ValType::F32 => "f32".into(),
        ValType::F64 => "f64".into(),
        ValType::V128 => "v128".into(),
        ValType::Ref(r) => format!("{r}"),
    }
}

/// A value as text (what `tern run` prints).
pub fn to_text(v: &Val) -> String {
    match v {
        Val::I32(x) => x.to_string(),
        Val::I64(x) => x.to_string(),
        Val::F32(b) => f32::from_bits(*b).to_string(),
        Val::F64(b) => f64::from_bits(*b).to_string(),
        Val::V128(x) => format!("{:#034x}", x.as_u128()),
        other => format!("{other:?}"),
    }
}

/// A value as JSON: integers and floats as numbers (a float that JSON cannot
/// hold, NaN or infinite, as the string `"NaN"`, `"inf"`, `"-inf"`).
pub fn to_json(v: &Val) -> JsonValue {
    match v {
        Val::I32(x) => JsonValue::Int(*x as i64),
        Val::I64(x) => JsonValue::Int(*x),
        Val::F32(b) => JsonValue::float(f32::from_bits(*b) as f64),
        Val::F64(b) => JsonValue::float(f64::from_bits(*b)),
        other => JsonValue::Text(to_text(other)),
    }
}

/// A JSON-friendly value (serializes as a number or a string).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum JsonValue {
    Int(i64),
    Float(f64),
    Text(String),
}

impl JsonValue {
    fn float(f: f64) -> JsonValue {
        if f.is_finite() {
            JsonValue::Float(f)
        } else {
            JsonValue::Text(f.to_string())
        }
    }
}
