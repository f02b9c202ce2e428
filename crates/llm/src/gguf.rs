//! Writing GGUF files with ggml's own writer (the one llama.cpp saves models with), so a model
//! converted at pull time (or written by a test) is exactly what the loader expects. The unsafe calls stay in this
//! module: the rest of the crate sees keys, arrays and f32 tensors.

use selfcloud_core::Error;
use std::ffi::{c_char, CString};
use std::path::Path;

/// A GGUF file being put together in memory: metadata, then tensors that borrow their data
/// until [`GgufWriter::write`].
pub struct GgufWriter<'data> {
    gguf: *mut llama_cpp_sys_2::gguf_context,
    /// Holds the tensors' descriptions (never their data: `no_alloc`).
    tensors: *mut llama_cpp_sys_2::ggml_context,
    data: std::marker::PhantomData<&'data [f32]>,
}

/// Most tensors one file may hold (the descriptions' arena is sized for them).
const MAX_TENSORS: usize = 1024;

fn c_string(s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::internal(format!("a GGUF name holds a NUL: {s:?}")))
}

impl<'data> GgufWriter<'data> {
    pub fn new() -> Result<Self, Error> {
        // SAFETY: both constructors take no pointers; null results are checked below.
        let gguf = unsafe { llama_cpp_sys_2::gguf_init_empty() };
        let params = llama_cpp_sys_2::ggml_init_params {
            mem_size: MAX_TENSORS * unsafe { llama_cpp_sys_2::ggml_tensor_overhead() },
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        };
        let tensors = unsafe { llama_cpp_sys_2::ggml_init(params) };
        if gguf.is_null() || tensors.is_null() {
            return Err(Error::internal("ggml could not start a GGUF file"));
        }
        Ok(GgufWriter { gguf, tensors, data: std::marker::PhantomData })
    }

    pub fn set_str(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let (key, value) = (c_string(key)?, c_string(value)?);
        // SAFETY: gguf copies both strings.
        unsafe { llama_cpp_sys_2::gguf_set_val_str(self.gguf, key.as_ptr(), value.as_ptr()) };
        Ok(())
    }

    pub fn set_u32(&mut self, key: &str, value: u32) -> Result<(), Error> {
        let key = c_string(key)?;
        unsafe { llama_cpp_sys_2::gguf_set_val_u32(self.gguf, key.as_ptr(), value) };
        Ok(())
    }

    pub fn set_f32(&mut self, key: &str, value: f32) -> Result<(), Error> {
        let key = c_string(key)?;
        unsafe { llama_cpp_sys_2::gguf_set_val_f32(self.gguf, key.as_ptr(), value) };
        Ok(())
    }

    pub fn set_bool(&mut self, key: &str, value: bool) -> Result<(), Error> {
        let key = c_string(key)?;
        unsafe { llama_cpp_sys_2::gguf_set_val_bool(self.gguf, key.as_ptr(), value) };
        Ok(())
    }

    pub fn set_strings(&mut self, key: &str, values: &[String]) -> Result<(), Error> {
        let key = c_string(key)?;
        let owned = values.iter().map(|v| c_string(v)).collect::<Result<Vec<_>, _>>()?;
        let mut pointers: Vec<*const c_char> = owned.iter().map(|v| v.as_ptr()).collect();
        // SAFETY: gguf copies every string before this returns.
        unsafe { llama_cpp_sys_2::gguf_set_arr_str(self.gguf, key.as_ptr(), pointers.as_mut_ptr(), pointers.len()) };
        Ok(())
    }

    pub fn set_i32s(&mut self, key: &str, values: &[i32]) -> Result<(), Error> {
        self.set_array(key, llama_cpp_sys_2::GGUF_TYPE_INT32, values)
    }

    pub fn set_f32s(&mut self, key: &str, values: &[f32]) -> Result<(), Error> {
        self.set_array(key, llama_cpp_sys_2::GGUF_TYPE_FLOAT32, values)
    }

    /// An array of plain numbers; `kind` is theirs (4 bytes each, as both callers' are).
    fn set_array<T: Copy>(&mut self, key: &str, kind: llama_cpp_sys_2::gguf_type, values: &[T]) -> Result<(), Error> {
        let key = c_string(key)?;
        // SAFETY: gguf copies the array (`values.len()` items of `kind`'s size).
        unsafe {
            llama_cpp_sys_2::gguf_set_arr_data(self.gguf, key.as_ptr(), kind, values.as_ptr().cast(), values.len())
        };
        Ok(())
    }

    /// An f32 tensor; `dims` in ggml's order (fastest-varying first: a PyTorch `[rows, cols]`
    /// matrix is `[cols, rows]` here, with the same bytes).
    pub fn add_f32(&mut self, name: &str, dims: &[usize], data: &'data [f32]) -> Result<(), Error> {
        let ne: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        if dims.is_empty() || dims.len() > 4 || dims.iter().product::<usize>() != data.len() {
            return Err(Error::internal(format!("tensor {name}: {dims:?} does not hold {} values", data.len())));
        }
        // ggml keeps names of at most 63 bytes and aborts on a second tensor of the same name.
        if name.len() > 63 || self.has_tensor(name)? {
            return Err(Error::internal(format!("tensor {name}: too long a name, or twice")));
        }
        let c_name = c_string(name)?;
        // SAFETY: the arena has room for MAX_TENSORS descriptions (checked by ggml, which returns
        // null when full); gguf copies the description and keeps `data`'s address, which the
        // lifetime 'data keeps valid until `write`.
        unsafe {
            let tensor = llama_cpp_sys_2::ggml_new_tensor(
                self.tensors,
                llama_cpp_sys_2::GGML_TYPE_F32,
                ne.len() as i32,
                ne.as_ptr(),
            );
            if tensor.is_null() {
                return Err(Error::internal("too many tensors for one GGUF file"));
            }
            llama_cpp_sys_2::ggml_set_name(tensor, c_name.as_ptr());
            llama_cpp_sys_2::gguf_add_tensor(self.gguf, tensor);
            llama_cpp_sys_2::gguf_set_tensor_data(self.gguf, c_name.as_ptr(), data.as_ptr().cast());
        }
        Ok(())
    }

    fn has_tensor(&self, name: &str) -> Result<bool, Error> {
        let name = c_string(name)?;
        Ok(unsafe { llama_cpp_sys_2::gguf_find_tensor(self.gguf, name.as_ptr()) } >= 0)
    }

    /// Writes the file (metadata, then every tensor's data, aligned as GGUF requires).
    pub fn write(self, path: &Path) -> Result<(), Error> {
        let c_path = path
            .to_str()
            .and_then(|p| CString::new(p).ok())
            .ok_or_else(|| Error::internal(format!("{} is not a usable path", path.display())))?;
        if unsafe { llama_cpp_sys_2::gguf_write_to_file(self.gguf, c_path.as_ptr(), false) } {
            Ok(())
        } else {
            Err(Error::internal(format!("ggml could not write {}", path.display())))
        }
    }
}

impl Drop for GgufWriter<'_> {
    fn drop(&mut self) {
        // SAFETY: both were made in `new` and are freed once, here.
        unsafe {
            llama_cpp_sys_2::gguf_free(self.gguf);
            llama_cpp_sys_2::ggml_free(self.tensors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_reads_back_through_llama_cpp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let data: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let mut w = GgufWriter::new().unwrap();
        w.set_str("general.architecture", "test").unwrap();
        w.set_u32("test.count", 7).unwrap();
        w.set_strings("test.words", &["a".into(), "b".into()]).unwrap();
        w.add_f32("m.weight", &[3, 2], &data).unwrap();
        assert!(w.add_f32("m.weight", &[3, 2], &data).is_err(), "a name twice");
        assert!(w.add_f32("bad", &[4, 2], &data).is_err(), "a shape that does not fit");
        w.write(&path).unwrap();

        let read = llama_cpp_2::gguf::GgufContext::from_file(&path).unwrap();
        assert_eq!(read.val_str(read.find_key("general.architecture")), Some("test"));
        assert_eq!(read.val_u32(read.find_key("test.count")), 7);
        assert_eq!(read.n_tensors(), 1);
        // Header, metadata, one tensor description, then the data section: 6 f32s padded to
        // GGUF's 32-byte alignment.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..4], b"GGUF");
        let data_at = bytes.len() - 32;
        let tail: Vec<f32> =
            bytes[data_at..data_at + 24].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(tail, data);
    }
}
