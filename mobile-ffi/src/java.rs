//! The JNI layer behind `android/src/org/geowall/Geowall.java`: the same
//! calls as the C ABI, with Java types. Errors are thrown as
//! `org.geowall.GeowallException` (code and message); a panic is caught
//! and thrown the same way, never unwound into the JVM.

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use jni::JNIEnv;
use jni::JavaVM;
use jni::objects::{GlobalRef, JByteArray, JClass, JObject, JString, JValue};
use jni::sys::{jint, jlong, jstring};

use crate::GeowallStatus;
use crate::core::{self, Code, Error};

const EXCEPTION: &str = "org/geowall/GeowallException";

/// Throws `e` as a `GeowallException(int code, String message)`.
fn throw(env: &mut JNIEnv<'_>, e: &Error) {
    if env.exception_check().unwrap_or(false) {
        return;
    }
    let code = GeowallStatus::from(e.code) as i32;
    let thrown = (|| -> jni::errors::Result<()> {
        let msg = env.new_string(&e.message)?;
        let ex = env.new_object(
            EXCEPTION,
            "(ILjava/lang/String;)V",
            &[JValue::Int(code), JValue::Object(&msg)],
        )?;
        env.throw(jni::objects::JThrowable::from(ex))
    })();
    if thrown.is_err() {
        let _ = env.throw_new("java/lang/IllegalStateException", &e.message);
    }
}

/// Runs `f` with panics caught; errors become exceptions and `fallback`
/// is returned to the JVM (which ignores it once an exception is pending).
fn call<'l, T>(
    env: &mut JNIEnv<'l>,
    fallback: T,
    f: impl FnOnce(&mut JNIEnv<'l>) -> Result<T, Error>,
) -> T {
    match catch_unwind(AssertUnwindSafe(|| f(env))) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            throw(env, &e);
            fallback
        }
        Err(_) => {
            throw(
                env,
                &Error::new(Code::Internal, "internal error in geowall (panic)"),
            );
            fallback
        }
    }
}

fn string(env: &mut JNIEnv<'_>, s: &JString<'_>, what: &str) -> Result<String, Error> {
    if s.is_null() {
        return Err(Error::new(Code::NullPointer, format!("{what} is null")));
    }
    env.get_string(s)
        .map(String::from)
        .map_err(|e| Error::new(Code::InvalidUtf8, format!("{what}: {e}")))
}

fn jstr(env: &mut JNIEnv<'_>, s: &str) -> Result<jstring, Error> {
    env.new_string(s)
        .map(JString::into_raw)
        .map_err(|e| Error::new(Code::Internal, format!("cannot make a Java string: {e}")))
}

fn handle(h: jlong) -> u64 {
    u64::from_ne_bytes(h.to_ne_bytes())
}

fn jhandle(h: u64) -> jlong {
    jlong::from_ne_bytes(h.to_ne_bytes())
}

/// The Java `Geowall.Callbacks` object, as the engine's [`core::Host`].
struct JHost {
    vm: JavaVM,
    cb: Option<GlobalRef>,
}

impl JHost {
    /// Calls a method of the callbacks object on this (engine) thread;
    /// an exception thrown there is described and cleared.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut JNIEnv<'_>, &JObject<'_>) -> jni::errors::Result<T>,
    ) -> Option<T> {
        let cb = self.cb.as_ref()?;
        let mut env = self.vm.attach_current_thread_permanently().ok()?;
        let r = f(&mut env, cb.as_obj());
        if env.exception_check().unwrap_or(false) {
            let _ = env.exception_describe();
            let _ = env.exception_clear();
            return None;
        }
        r.ok()
    }
}

impl core::Host for JHost {
    fn protect(&self, fd: RawFd) -> bool {
        self.with(|env, cb| {
            env.call_method(cb, "protectSocket", "(I)Z", &[JValue::Int(fd)])?
                .z()
        })
        .unwrap_or(false)
    }

    fn has_protect(&self) -> bool {
        self.cb.is_some()
    }

    fn has_app_lookup(&self) -> bool {
        self.cb.is_some()
    }

    fn app_for_flow(&self, proto: i32, src: SocketAddr, dst: SocketAddr) -> Option<String> {
        self.with(|env, cb| {
            let s = env.new_string(src.to_string())?;
            let d = env.new_string(dst.to_string())?;
            let r = env
                .call_method(
                    cb,
                    "appForFlow",
                    "(ILjava/lang/String;Ljava/lang/String;)Ljava/lang/String;",
                    &[JValue::Int(proto), JValue::Object(&s), JValue::Object(&d)],
                )?
                .l()?;
            if r.is_null() {
                return Ok(None);
            }
            let r = JString::from(r);
            let id: String = env.get_string(&r)?.into();
            Ok((!id.is_empty()).then_some(id))
        })
        .flatten()
    }

    fn on_event(&self, json: &str) {
        self.with(|env, cb| {
            let j = env.new_string(json)?;
            env.call_method(
                cb,
                "onEvent",
                "(Ljava/lang/String;)V",
                &[JValue::Object(&j)],
            )
            .map(drop)
        });
    }

    fn on_log(&self, level: core::Level, msg: &str) {
        self.with(|env, cb| {
            let m = env.new_string(msg)?;
            env.call_method(
                cb,
                "onLog",
                "(ILjava/lang/String;)V",
                &[JValue::Int(level as i32), JValue::Object(&m)],
            )
            .map(drop)
        });
    }
}

/// `static native long nativeStart(int tunFd, String configJson, Callbacks callbacks)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_geowall_Geowall_nativeStart<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    tun_fd: jint,
    config: JString<'l>,
    callbacks: JObject<'l>,
) -> jlong {
    call(&mut env, 0, |env| {
        let cfg = core::Config::parse(&string(env, &config, "configJson")?)?;
        let vm = env
            .get_java_vm()
            .map_err(|e| Error::new(Code::Internal, format!("no Java VM: {e}")))?;
        let cb = if callbacks.is_null() {
            None
        } else {
            Some(
                env.new_global_ref(&callbacks)
                    .map_err(|e| Error::new(Code::Internal, format!("callbacks: {e}")))?,
            )
        };
        let r = core::Running::start(tun_fd, &cfg, Arc::new(JHost { vm, cb }))?;
        Ok(jhandle(core::register(core::Object::Engine(Arc::new(r)))))
    })
}

/// `static native void nativeStop(long handle)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_geowall_Geowall_nativeStop<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
) {
    call(&mut env, (), |_| core::engine(handle(h))?.stop());
}

/// `static native void nativeFree(long handle)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_geowall_Geowall_nativeFree<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
) {
    call(&mut env, (), |_| core::free(handle(h)));
}

/// `static native long nativeUpdateBundle(long handle, byte[] bundle)`:
/// the installed sequence.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_geowall_Geowall_nativeUpdateBundle<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    bundle: JByteArray<'l>,
) -> jlong {
    call(&mut env, 0, |env| {
        if bundle.is_null() {
            return Err(Error::new(Code::NullPointer, "bundle is null"));
        }
        let bytes = env
            .convert_byte_array(&bundle)
            .map_err(|e| Error::new(Code::InvalidArgument, format!("bundle: {e}")))?;
        let seq = core::install(handle(h), &bytes)?;
        Ok(i64::try_from(seq).unwrap_or(i64::MAX))
    })
}

/// `static native void nativeSetDnsUpstreams(long handle, String json)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_geowall_Geowall_nativeSetDnsUpstreams<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    json: JString<'l>,
) {
    call(&mut env, (), |env| {
        let text = string(env, &json, "upstreamsJson")?;
        let upstreams = core::upstream_list(&text, "upstreamsJson")?;
        core::engine(handle(h))?.set_dns_upstreams(&upstreams)
    });
}

/// `static native void nativeSetIdentifiers(long handle, String json)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_geowall_Geowall_nativeSetIdentifiers<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    json: JString<'l>,
) {
    call(&mut env, (), |env| {
        let text = string(env, &json, "identifiersJson")?;
        let ids = serde_json::from_str(&text).map_err(|e| {
            Error::new(
                Code::InvalidArgument,
                format!("identifiersJson: expected an object of label to value: {e}"),
            )
        })?;
        core::engine(handle(h))?.set_identifiers(&ids)
    });
}

/// `static native void nativeAnswer(long handle, long prompt, boolean allow, int scope)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_geowall_Geowall_nativeAnswer<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    prompt: jlong,
    allow: jni::sys::jboolean,
    scope: jint,
) {
    call(&mut env, (), |_| {
        let prompt = u64::try_from(prompt).map_err(|_| {
            Error::new(
                Code::InvalidArgument,
                format!("prompt {prompt} is negative"),
            )
        })?;
        let scope = u32::try_from(scope).unwrap_or(u32::MAX);
        core::engine(handle(h))?.answer(prompt, allow != 0, scope)
    });
}

/// `static native String nativeStats(long handle)`: JSON.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_geowall_Geowall_nativeStats<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
) -> jstring {
    call(&mut env, std::ptr::null_mut(), |env| {
        let engine = core::engine(handle(h))?;
        let s = engine.stats();
        let c = &s.live.counters;
        let j = serde_json::json!({
            "running": s.running,
            "flows": s.live.flows,
            "tun_packets": c.tun_packets,
            "opened": c.opened,
            "blocked": c.blocked,
            "cut": c.cut,
            "refused": c.refused,
            "dropped": core::dropped(&s.live),
            "dns_queries": c.dns_queries,
            "dns_blocked": c.dns_blocked,
            "dns_filtered": c.dns_filtered,
            "dns_cached": s.live.dns_cached,
            "bytes_up": s.live.bytes_up,
            "bytes_down": s.live.bytes_down,
            "bundle_sequence": s.bundle_sequence,
            "uptime_ms": s.uptime_ms,
            "asked": c.asked,
            "asked_busy": c.asked_busy,
            "subscriptions": engine.rules.subscriptions(),
        });
        jstr(env, &j.to_string())
    })
}

/// `static native long nativeCheckerNew(String configJson)`
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_geowall_Geowall_nativeCheckerNew<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    config: JString<'l>,
) -> jlong {
    call(&mut env, 0, |env| {
        let cfg = core::Config::parse(&string(env, &config, "configJson")?)?;
        let rules = core::Rules::load(&cfg)?;
        Ok(jhandle(core::register(core::Object::Checker(Arc::new(
            rules,
        )))))
    })
}

/// `static native String nativeCheck(long handle, String host, int port,
/// int transport, int traffic, String app)`: the verdict as JSON.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_geowall_Geowall_nativeCheck<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    h: jlong,
    host: JString<'l>,
    port: jint,
    transport: jint,
    traffic: jint,
    app: JString<'l>,
) -> jstring {
    call(&mut env, std::ptr::null_mut(), |env| {
        let host = string(env, &host, "host")?;
        let app = if app.is_null() {
            None
        } else {
            Some(string(env, &app, "app")?)
        };
        let port = u16::try_from(port)
            .map_err(|_| Error::new(Code::InvalidArgument, format!("port {port}: 0..=65535")))?;
        let q = core::Query {
            host: &host,
            port,
            transport: core::transport(transport)?,
            traffic: core::traffic(traffic)?,
            app: app.as_deref(),
        };
        let c = core::check(handle(h), &q)?;
        jstr(env, &c.json)
    })
}

/// `static native String nativeVersion()`: JSON with `library`, `abi`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_org_geowall_Geowall_nativeVersion<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
) -> jstring {
    call(&mut env, std::ptr::null_mut(), |env| {
        let j = serde_json::json!({
            "library": env!("CARGO_PKG_VERSION"),
            "abi": crate::GEOWALL_ABI_VERSION,
        });
        jstr(env, &j.to_string())
    })
}
