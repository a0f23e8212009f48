//! Run-time CPU dispatch for plain loops: [`multiversion!`](crate::multiversion) compiles one
//! `#[inline(always)]` body twice, once for the listed x86-64 target features and once for the
//! baseline, and picks the first copy the CPU supports at each call. The loops are written so the
//! compiler vectorises them; no intrinsics.

/// Defines `fn $name(args) -> R` whose body runs compiled for the target features in the list
/// (e.g. `["avx2"]`, `["avx2", "fma"]`) when the CPU has all of them, for the baseline otherwise.
/// Generic parameters are allowed: `fn f<K: Kernel>(k: &K) -> () { .. }`.
///
/// Without `"fma"` the two copies give bit-identical results (Rust never contracts `a·b + c` into
/// an FMA); with it the fast copy may round differently, still deterministically on one machine.
#[macro_export]
macro_rules! multiversion {
    ([$($feat:tt),+] $(#[$m:meta])* fn $name:ident$(<$($g:ident: $b:path),*>)?($($a:ident: $t:ty),*) -> $r:ty $body:block) => {
        $(#[$m])*
        fn $name$(<$($g: $b),*>)?($($a: $t),*) -> $r {
            #[inline(always)]
            fn generic$(<$($g: $b),*>)?($($a: $t),*) -> $r $body
            #[cfg(target_arch = "x86_64")]
            $(#[target_feature(enable = $feat)])+
            unsafe fn fast$(<$($g: $b),*>)?($($a: $t),*) -> $r {
                generic($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $(std::arch::is_x86_feature_detected!($feat))&&+ {
                // SAFETY: the CPU supports every feature `fast` was compiled for (checked above).
                return unsafe { fast($($a),*) };
            }
            generic($($a),*)
        }
    };
}

#[cfg(test)]
mod tests {
    crate::multiversion! {
        ["avx2", "fma"]
        /// Σ a·b, 8 lanes.
        fn dot(a: &[f32], b: &[f32]) -> f32 {
            let mut l = [0f32; 8];
            for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
                for j in 0..8 {
                    l[j] += ca[j] * cb[j];
                }
            }
            l.iter().sum()
        }
    }

    trait Scale {
        fn k(&self) -> f32;
    }
    struct Two;
    impl Scale for Two {
        fn k(&self) -> f32 {
            2.0
        }
    }
    crate::multiversion! {
        ["avx2"]
        fn scaled<S: Scale>(s: &S, x: &mut [f32]) -> () {
            x.iter_mut().for_each(|v| *v *= s.k());
        }
    }

    #[test]
    fn both_forms_compute_the_body() {
        let a: Vec<f32> = (0..16).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..16).map(|i| (i * i) as f32).sum::<f32>());
        let mut x = vec![1.5f32; 5];
        scaled(&Two, &mut x);
        assert_eq!(x, vec![3.0; 5]);
    }
}
