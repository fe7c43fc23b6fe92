//! Reads NumPy `.npy` files (format versions 1-3, C order, little-endian): what the
//! transformers oracles on the GPU host write (tools/gpu/ernie_oracle.py). Only the element
//! types those files use: `<f4`, `<i8` and `|u1`.

use std::path::Path;

/// One array: its shape and its elements widened to f64 (i64 ids and u8 pixels are exact).
#[derive(Clone, Debug)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl NpyArray {
    pub fn as_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&x| x as f32).collect()
    }

    pub fn as_i64(&self) -> Vec<i64> {
        self.data.iter().map(|&x| x as i64).collect()
    }
}

/// Reads `path`, panicking with the file's name and what is wrong with it.
pub fn read_npy(path: &Path) -> NpyArray {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_npy(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn parse_npy(bytes: &[u8]) -> Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy file".into());
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
        v => return Err(format!("format version {v} is not read here")),
    };
    let data_start = header_start + header_len;
    let header = std::str::from_utf8(bytes.get(header_start..data_start).ok_or("header cut short")?)
        .map_err(|e| format!("header: {e}"))?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header.find(key).ok_or(format!("header has no {key}"))?;
        Ok(header[at + key.len()..].trim_start_matches([' ', ':']))
    };
    let descr = field("'descr'")?;
    let descr = descr.split('\'').nth(1).ok_or("descr is not a string")?;
    if !field("'fortran_order'")?.starts_with("False") {
        return Err("Fortran order is not read here".into());
    }
    let shape_text = field("'shape'")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("shape is not a tuple")?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|e| format!("shape {inner}: {e}")))
        .collect::<Result<_, _>>()?;
    let count: usize = shape.iter().product();
    let body = &bytes[data_start..];
    let width = match descr {
        "<f4" | "<i4" => 4,
        "<i8" | "<f8" => 8,
        "|u1" | "|b1" => 1,
        other => return Err(format!("element type {other} is not read here")),
    };
    if body.len() != count * width {
        return Err(format!("{} data bytes for {count} elements of {descr}", body.len()));
    }
    let data = body
        .chunks_exact(width)
        .map(|c| match descr {
            "<f4" => f32::from_le_bytes(c.try_into().unwrap()) as f64,
            "<i4" => i32::from_le_bytes(c.try_into().unwrap()) as f64,
            "<i8" => i64::from_le_bytes(c.try_into().unwrap()) as f64,
            "<f8" => f64::from_le_bytes(c.try_into().unwrap()),
            _ => c[0] as f64,
        })
        .collect();
    Ok(NpyArray { shape, data })
}
