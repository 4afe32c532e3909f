//! A streaming reader of unsigned-byte IDX files, raw or gzipped.
//!
//! The header is read and checked before any payload: a file may announce at most
//! [`MAX_ITEMS`] items of at most [`MAX_ITEM_BYTES`] bytes, [`MAX_PAYLOAD_BYTES`] in all, so a
//! damaged or hostile header fails before anything is allocated. The payload is then read into a
//! buffer of exactly the announced size, and at most [`TRAILING_PROBE`] bytes past it are read to
//! report trailing data. Peak memory is therefore what the header announces, however far a gzip
//! stream would inflate.

use super::{data_err, to_hex, REFETCH};
use crate::error::Result;
use flate2::bufread::MultiGzDecoder;
use sha2::{Digest, Sha256};
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};

/// Most items (images or labels) one file may announce: 280 times full MNIST's 60,000, and more
/// than any IDX set an MLP trainer is fed, yet small enough that a flipped high bit in the count
/// is caught.
const MAX_ITEMS: usize = 1 << 24;
/// Most bytes one item may have: a 1024×1024 image.
const MAX_ITEM_BYTES: usize = 1 << 20;
/// Most payload bytes one file may announce (1 GiB; full MNIST's training images are 47 MB). The
/// reader allocates this much at most.
const MAX_PAYLOAD_BYTES: usize = 1 << 30;
/// How many bytes past the payload are read to measure trailing data before giving up counting.
const TRAILING_PROBE: u64 = 1 << 20;

/// One IDX file whose header has been read and checked; [`IdxReader::finish`] reads the rest.
pub(super) struct IdxReader<'a, const N: usize> {
    source: PathBuf,
    what: &'static str,
    gzip: bool,
    stream: Box<dyn Read + 'a>,
    dims: [usize; N],
    hash: Sha256,
}

impl<'a, const N: usize> IdxReader<'a, N> {
    /// Opens the file at `path` and reads its header, which must carry `magic`.
    pub(super) fn open(path: &Path, magic: u32, what: &'static str) -> Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| data_err(path, format!("cannot read: {e}; check its permissions")))?;
        IdxReader::new(path.to_path_buf(), io::BufReader::new(file), magic, what)
    }

    /// Reads the header of the IDX file that `input` holds, raw or gzipped (told apart by the
    /// gzip magic: a raw IDX file starts with 0). `source` names the file in errors.
    pub(super) fn new(
        source: PathBuf,
        mut input: impl BufRead + 'a,
        magic: u32,
        what: &'static str,
    ) -> Result<Self> {
        let gzip = input
            .fill_buf()
            .map_err(|e| data_err(&source, format!("cannot read: {e}")))?
            .starts_with(&[0x1f, 0x8b]);
        let stream: Box<dyn Read + 'a> = if gzip {
            // Multi-member: `cat a.gz b.gz` is a valid gzip file.
            Box::new(MultiGzDecoder::new(input))
        } else {
            Box::new(input)
        };
        let mut reader = IdxReader {
            source,
            what,
            gzip,
            stream,
            dims: [0; N],
            hash: Sha256::new(),
        };
        reader.read_header(magic)?;
        Ok(reader)
    }

    /// The dimensions the header announces; the first is the item count.
    pub(super) fn dims(&self) -> [usize; N] {
        self.dims
    }

    /// The file's name in errors.
    pub(super) fn source(&self) -> &Path {
        &self.source
    }

    fn read_header(&mut self, magic: u32) -> Result<()> {
        let mut word = [0u8; 4];
        let got = self.read_full(&mut word)?;
        if got < 4 {
            return Err(self.err(format!("{got} bytes, too short for an IDX file; {REFETCH}")));
        }
        let found = u32::from_be_bytes(word);
        if found != magic {
            return Err(self.err(format!(
                "IDX magic is {found:#010x} ({}), expected {magic:#010x} for MNIST {} with {N} \
                 dimension(s)",
                describe_magic(found),
                self.what
            )));
        }
        self.hash.update(word);
        let mut dims = vec![0u8; 4 * N];
        let got = self.read_full(&mut dims)?;
        if got < dims.len() {
            return Err(self.err(format!(
                "truncated: {} bytes, shorter than the {}-byte IDX header; {REFETCH}",
                4 + got,
                4 + 4 * N
            )));
        }
        self.hash.update(&dims);
        let mut words = dims
            .chunks_exact(4)
            .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize);
        self.dims = std::array::from_fn(|_| words.next().unwrap_or(0));
        self.check_dims()
    }

    /// Rejects headers announcing more than the limits, before anything is allocated.
    fn check_dims(&self) -> Result<()> {
        let shape = self.shape();
        let count = self.dims[0];
        let what = self.what;
        let too_big = |detail: String| {
            self.err(format!(
                "the header announces {shape} bytes of {what}: {detail}; the header is damaged \
                 ({REFETCH}) or the set is too large for ampkit"
            ))
        };
        if count > MAX_ITEMS {
            return Err(too_big(format!(
                "{count} items, more than the {MAX_ITEMS} ampkit reads from one file (full \
                 MNIST has 60000)"
            )));
        }
        // Each dimension is below 2^32, so the product of the rest fits in u128.
        let item: u128 = self.dims[1..].iter().map(|&d| d as u128).product();
        if item > MAX_ITEM_BYTES as u128 {
            return Err(too_big(format!(
                "{item} bytes per item, more than the {MAX_ITEM_BYTES} ampkit accepts (MNIST \
                 has 784)"
            )));
        }
        let total = item * count as u128;
        if total > MAX_PAYLOAD_BYTES as u128 {
            return Err(too_big(format!(
                "{total} bytes in all, more than the {MAX_PAYLOAD_BYTES} ampkit reads from one \
                 file"
            )));
        }
        Ok(())
    }

    /// Reads the payload the header announces and checks that nothing follows it; returns the
    /// payload and the sha256 (hex) of the decoded file, header and payload.
    pub(super) fn finish(mut self) -> Result<(Vec<u8>, String)> {
        // check_dims bounded the product by MAX_PAYLOAD_BYTES.
        let want: usize = self.dims.iter().product();
        let mut payload = Vec::new();
        payload.try_reserve_exact(want).map_err(|e| {
            self.err(format!(
                "cannot allocate the {want} bytes of {} the header announces: {e}",
                self.what
            ))
        })?;
        let read = (&mut self.stream)
            .take(want as u64)
            .read_to_end(&mut payload);
        read.map_err(|e| self.read_err(e))?;
        if payload.len() < want {
            return Err(self.err(format!(
                "truncated: the header announces {} = {want} bytes of {}, the file has {} after \
                 the header; {REFETCH}",
                self.shape(),
                self.what,
                payload.len()
            )));
        }
        // Reading on to the end also makes the gzip decoder check the stream's CRC and length.
        let trailing = io::copy(
            &mut (&mut self.stream).take(TRAILING_PROBE + 1),
            &mut io::sink(),
        )
        .map_err(|e| self.read_err(e))?;
        if trailing > 0 {
            let amount = if trailing > TRAILING_PROBE {
                format!("more than {TRAILING_PROBE}")
            } else {
                trailing.to_string()
            };
            return Err(self.err(format!(
                "{amount} bytes of trailing garbage after the {} = {want} bytes of {} the header \
                 announces; {REFETCH}",
                self.shape(),
                self.what
            )));
        }
        self.hash.update(&payload);
        Ok((payload, to_hex(&self.hash.finalize())))
    }

    /// Fills `buf` unless the stream ends first; returns how many bytes it read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.stream.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.read_err(e)),
            }
        }
        Ok(got)
    }

    fn read_err(&self, e: io::Error) -> crate::Error {
        if self.gzip {
            self.err(format!("corrupt or truncated gzip data ({e}); {REFETCH}"))
        } else {
            self.err(format!("cannot read: {e}"))
        }
    }

    fn err(&self, detail: String) -> crate::Error {
        data_err(&self.source, detail)
    }

    /// The dimensions as `a×b×c`.
    fn shape(&self) -> String {
        self.dims.map(|d| d.to_string()).join("×")
    }
}

/// What an IDX magic number describes, for errors: two zero bytes, the element type, the number
/// of dimensions.
fn describe_magic(magic: u32) -> String {
    let [z0, z1, dtype, ndims] = magic.to_be_bytes();
    if (z0, z1) != (0, 0) {
        return "not an IDX file".to_string();
    }
    let swapped = match (dtype, ndims) {
        (0x08, 3) => ": an images file; images and labels swapped?",
        (0x08, 1) => ": a labels file; images and labels swapped?",
        _ => "",
    };
    let dtype = match dtype {
        0x08 => "unsigned bytes",
        0x09 => "signed bytes",
        0x0b => "16-bit integers",
        0x0c => "32-bit integers",
        0x0d => "f32",
        0x0e => "f64",
        _ => return "not an IDX file: unknown element type".to_string(),
    };
    format!("an IDX file of {dtype} with {ndims} dimension(s){swapped}")
}
