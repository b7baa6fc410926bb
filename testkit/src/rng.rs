//! CPython's `random.Random` (MT19937 seeded from a string), bit for bit.
//!
//! The fixtures are a port of mkimage.py; reproducing its generator exactly keeps the file
//! contents, and therefore the layers' diff_ids, identical to what the Python tool produced,
//! so results from either tool stay comparable.

use sha2::{Digest, Sha512};

const N: usize = 624;
const M: usize = 397;

pub(crate) struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)` for a `str` seed (version 2 seeding: the UTF-8 bytes followed by
    /// their SHA-512, read as one big-endian integer).
    pub(crate) fn from_str_seed(seed: &str) -> PyRandom {
        let mut bytes = seed.as_bytes().to_vec();
        bytes.extend_from_slice(&Sha512::digest(seed.as_bytes()));
        // CPython feeds the integer's 32-bit words least significant first.
        let significant = match bytes.iter().position(|&b| b != 0) {
            Some(i) => &bytes[i..],
            None => &[][..],
        };
        let mut key: Vec<u32> = significant
            .rchunks(4)
            .map(|chunk| {
                let mut word = [0u8; 4];
                word[4 - chunk.len()..].copy_from_slice(chunk);
                u32::from_be_bytes(word)
            })
            .collect();
        if key.is_empty() {
            key.push(0);
        }
        let mut r = PyRandom {
            mt: [0; N],
            index: N + 1,
        };
        r.init_by_array(&key);
        r
    }

    /// mkimage.py's `rng_for(seed, *parts)`: the seed string is `"{seed}:{parts joined by :}"`.
    pub(crate) fn keyed(seed: u64, key: &str) -> PyRandom {
        PyRandom::from_str_seed(&format!("{seed}:{key}"))
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(self.mt[i - 1] ^ (self.mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let mut i = 1usize;
        let mut j = 0usize;
        for _ in 0..N.max(key.len()) {
            self.mt[i] = (self.mt[i]
                ^ (self.mt[i - 1] ^ (self.mt[i - 1] >> 30)).wrapping_mul(1_664_525))
            .wrapping_add(key[j])
            .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            self.mt[i] = (self.mt[i]
                ^ (self.mt[i - 1] ^ (self.mt[i - 1] >> 30)).wrapping_mul(1_566_083_941))
            .wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                self.mt[0] = self.mt[N - 1];
                i = 1;
            }
        }
        self.mt[0] = 0x8000_0000;
    }

    fn twist(&mut self) {
        for k in 0..N {
            let y = (self.mt[k] & 0x8000_0000) | (self.mt[(k + 1) % N] & 0x7fff_ffff);
            let mut v = self.mt[(k + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.mt[k] = v;
        }
        self.index = 0;
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random()`: 53 bits from two draws.
    pub(crate) fn random(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `getrandbits(k)` for `k <= 32`.
    fn getrandbits32(&mut self, k: u32) -> u32 {
        debug_assert!((1..=32).contains(&k));
        self.next_u32() >> (32 - k)
    }

    /// `_randbelow(n)` (rejection sampling on `n.bit_length()` bits).
    pub(crate) fn randbelow(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.getrandbits32(k);
            if r < n {
                return r;
            }
        }
    }

    /// `randint(a, b)`, both ends included.
    pub(crate) fn randint(&mut self, a: u32, b: u32) -> u32 {
        a + self.randbelow(b - a + 1)
    }

    /// `choice(seq)`.
    pub(crate) fn choice<'a, T>(&mut self, seq: &'a [T]) -> &'a T {
        let len = u32::try_from(seq.len()).unwrap_or(u32::MAX);
        &seq[self.randbelow(len) as usize]
    }

    /// `randbytes(n)`: `getrandbits(8n)` as little-endian bytes, so full words come out in
    /// order and a trailing partial word keeps its most significant bits.
    pub(crate) fn fill_randbytes(&mut self, out: &mut Vec<u8>, n: usize) {
        out.reserve(n);
        let full = n / 4;
        for _ in 0..full {
            out.extend_from_slice(&self.next_u32().to_le_bytes());
        }
        let rest = n % 4;
        if rest > 0 {
            let word = self.next_u32() >> (32 - 8 * rest as u32);
            out.extend_from_slice(&word.to_le_bytes()[..rest]);
        }
    }

    pub(crate) fn randbytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        self.fill_randbytes(&mut out, n);
        out
    }
}

/// mkimage.py's word list for a seed: 4096 random lowercase words plus the first 372 again
/// with a newline, so about one token in twelve ends a line.
pub(crate) fn words_for(seed: u64) -> Vec<Vec<u8>> {
    let mut r = PyRandom::keyed(seed, "words");
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    let mut words: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            let len = r.randint(2, 10);
            (0..len).map(|_| *r.choice(letters)).collect()
        })
        .collect();
    let with_newline: Vec<Vec<u8>> = words[..372]
        .iter()
        .map(|w| {
            let mut w = w.clone();
            w.push(b'\n');
            w
        })
        .collect();
    words.extend(with_newline);
    words
}

/// mkimage.py's `text_bytes`: `n` bytes of word soup, drawn in batches of `choices()` joined
/// by spaces (batch boundaries get no separator) and cut at `n`.
pub(crate) fn text_bytes(r: &mut PyRandom, words: &[Vec<u8>], n: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(n + 64);
    let count = words.len() as f64;
    while out.len() - start < n {
        let have = out.len() - start;
        let k = 16.max((n - have) / 6 + 1);
        for i in 0..k {
            if i > 0 {
                out.push(b' ');
            }
            let idx = (r.random() * count).floor() as usize;
            out.extend_from_slice(&words[idx.min(words.len() - 1)]);
        }
    }
    out.truncate(start + n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Sha256;

    // Golden values printed by CPython 3.11 (`random.Random("1:words").getrandbits(32)` etc.).
    #[test]
    fn matches_cpython() {
        let mut r = PyRandom::from_str_seed("1:words");
        assert_eq!(
            [r.next_u32(), r.next_u32(), r.next_u32()],
            [1972918863, 3619060696, 3837191427]
        );
        let mut r = PyRandom::from_str_seed("1:mixed");
        assert_eq!(r.random(), 0.6820680302230933);
        assert_eq!(r.randint(1024, 65536), 32250);
        assert_eq!(r.randint(2, 10), 4);
        let mut r = PyRandom::from_str_seed("x");
        assert_eq!(crate::hex(&r.randbytes(7)), "d34d7ba102ae50");
        assert_eq!(crate::hex(&r.randbytes(4)), "c3afcf98");
        assert_eq!(PyRandom::from_str_seed("").next_u32(), 4124137760);
    }

    #[test]
    fn text_matches_mkimage() {
        let words = words_for(1);
        let mut out = Vec::new();
        text_bytes(&mut PyRandom::keyed(1, "mixed:f:1"), &words, 200, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "eujqbvrj inkrvwv kin psjrc mlnyxy huyul abkkkotj bu ntkolhby xzqlk fjlqi jfk \
             mzljrphv utnfy rt qlwow zdul ikzhdsirvg osk bcvzlygalw jtkamnt txtxo rmhg khozhnul\n \
             siineewduh\n gzepyxieu\n ninzpprsc rledc\n"
        );
        let mut out = Vec::new();
        text_bytes(&mut PyRandom::keyed(1, "t"), &words, 100_000, &mut out);
        assert_eq!(
            crate::hex(&Sha256::digest(&out)),
            "0e8f2c3ffac3bd901af6d1859fafa7f1084d34be3226b161469412855a01996e"
        );
    }

    #[test]
    fn float_pow_matches_cpython() {
        // smallfiles sizes go through float `**`; CPython calls libm pow like f64::powf.
        assert_eq!((512.0 * 16f64.powf(0.123456789f64.powf(1.6))) as u64, 564);
        assert_eq!(16f64.powf(0.7f64.powf(1.6)), 4.791788564455322);
    }
}
