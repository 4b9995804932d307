// Geowall.swift: the geowall engine for Swift apps (iOS, macOS), over the C
// ABI of include/geowall.h, imported as the Clang module GeowallFFI (see
// module.modulemap next to this file).
// SPDX-License-Identifier: MIT OR Apache-2.0

import Foundation
import GeowallFFI

// The C types share names with the Swift ones below (GeowallCallbacks,
// GeowallStats); this file always names the C ones as `GeowallFFI.X`.

/// A geowall call failed: `code` is the kind of failure, `message` the
/// library's explanation.
public struct GeowallError: Error, LocalizedError, CustomStringConvertible {
    /// The statuses of the C ABI (`GeowallStatus` in mobile-ffi/src/lib.rs,
    /// the same numbers as `org.geowall.GeowallException`).
    public enum Code: Int32, Sendable {
        case nullPointer = 1
        case invalidUtf8 = 2
        case invalidConfig = 3
        case invalidArgument = 4
        /// No engine or checker has this handle (e.g. `stats()` on a checker).
        case invalidHandle = 5
        case stopped = 6
        /// A rules bundle was refused; the running rules stay.
        case bundleRejected = 7
        case io = 8
        /// `stop()` was called from a callback, on the engine's own thread.
        case wrongThread = 9
        /// A bug in geowall (a caught panic).
        case internalError = 10
        /// A rules bundle was not newer than the installed one.
        case bundleRollback = 11
        /// A rules bundle had expired.
        case bundleExpired = 12
        /// A rules bundle's signature was missing or wrong.
        case bundleBadSignature = 13
        /// A rules bundle was signed by an untrusted key.
        case bundleUnknownKey = 14
        /// A subscription stopped the start (first fetch failed, kept
        /// bundle refused, update server blocked).
        case subscription = 15
        /// A status this wrapper does not know (a newer library): see `status`.
        case unknown = -1
    }

    /// The kind of failure.
    public let code: Code
    /// The raw status the C function returned.
    public let status: Int32
    /// What went wrong, for people.
    public let message: String

    public var errorDescription: String? { message }
    public var description: String { "geowall: \(message) (\(code), status \(status))" }

    /// The error of the call that just failed with `status` on this thread
    /// (geowall keeps the last message per thread).
    static func last(status: Int32) -> GeowallError {
        // Ask for the length first, then read into a buffer with room for
        // the NUL.
        let length = geowall_last_error(nil, 0)
        var message = ""
        if length > 0 {
            var buffer = [CChar](repeating: 0, count: length + 1)
            buffer.withUnsafeMutableBufferPointer { b in
                _ = geowall_last_error(b.baseAddress, b.count)
            }
            message = buffer.withUnsafeBytes { textBeforeNul($0) }
        }
        return GeowallError(code: Code(rawValue: status) ?? .unknown, status: status, message: message)
    }
}

/// What the app does for the engine. Every method has a default (see the
/// extension below), so an app implements only what it needs.
///
/// Threading: the methods run on the engine's own thread, one at a time,
/// never on the main thread. The engine waits for them, so they must return
/// quickly; calling `Geowall.stop()` from one throws `.wrongThread`.
///
/// Ownership: `Geowall.start` keeps the object alive until the engine is
/// freed (the `Geowall`'s deinit). Do not keep a strong reference to the
/// `Geowall` in it, or neither is ever freed.
public protocol GeowallCallbacks {
    /// Called with every socket the engine opens upstream, before it
    /// connects or sends. Return true once the socket is kept out of the
    /// tunnel, false to refuse it (the flow fails). On iOS and macOS a
    /// packet tunnel's own sockets bypass the tunnel: true is the default.
    func protectSocket(fd: Int32) -> Bool

    /// The app that owns a new flow, if known. `proto` is 6 (TCP) or 17
    /// (UDP); `src` and `dst` are "IP:PORT" or "[IPv6]:PORT". At most 256
    /// bytes of UTF-8 are used. Default nil (iOS has no API for it).
    func appForFlow(proto: Int32, src: String, dst: String) -> String?

    /// A decision, as one JSON object (unless the configuration says
    /// `"events": false`). Kind `asked` is an `ask` rule's question, the
    /// app's prompt (its `prompt` number, `app`, `server`, `rule`): answer
    /// it with `answer(prompt:allow:scope:)` from another thread. Kind
    /// `answered` says it was settled.
    func onEvent(json: String)

    /// A message for the app's log.
    func onLog(level: Geowall.LogLevel, message: String)
}

extension GeowallCallbacks {
    public func protectSocket(fd: Int32) -> Bool { true }
    public func appForFlow(proto: Int32, src: String, dst: String) -> String? { nil }
    public func onEvent(json: String) {}
    public func onLog(level: Geowall.LogLevel, message: String) {}
}

/// The geowall engine inside an app: a firewall on the packet tunnel's
/// utun device, and rule checks without an engine (`checker(config:)`).
///
/// Ownership: a `Geowall` owns its native engine or checker; its deinit
/// frees it (stopping an engine that still runs), then lets go of the
/// callbacks. The TUN descriptor is not owned: the engine works on a
/// duplicate of it.
///
/// Threading: every method may be called from any thread, concurrently;
/// the C ABI is thread-safe and this class holds only constants.
public final class Geowall: @unchecked Sendable {
    /// What the rules decide.
    public enum Action: Int32, Sendable {
        case allow = 0
        /// Block silently.
        case drop = 1
        /// Block with an answer (TCP reset, ICMP unreachable).
        case reject = 2
    }

    /// Transports for `check`: IP protocol numbers.
    public enum Transport: Int32, Sendable {
        case unknown = 0, icmp = 1, tcp = 6, udp = 17, icmpv6 = 58
    }

    /// Traffic classes for `check`.
    public enum Traffic: Int32, Sendable {
        case unknown = 0, dns = 1, web = 2, media = 3, ping = 4, other = 5
    }

    /// How far an answer to an `ask` rule reaches.
    public enum AnswerScope: Int32, Sendable {
        /// The flows held under the question.
        case once = 0
        /// Every flow of the app the rule asks about, while the engine runs.
        case app = 1
        /// The app and the destination, kept in `state_dir` across restarts.
        case always = 2
    }

    /// Levels of `GeowallCallbacks.onLog`.
    public enum LogLevel: Int32, Sendable {
        case error = 1, warn = 2, info = 3
    }

    /// The answer of `check`.
    public struct Verdict: Equatable, Sendable {
        public var action: Action
        /// Index of the deciding rule in the policy; nil: the default.
        public var ruleIndex: Int?
        /// The deciding rule's name; nil: the default.
        public var rule: String?
        /// The jurisdiction layer that matched, "layer:COUNTRY" (e.g.
        /// "vendor:CN"); nil if none.
        public var layer: String?

        /// True unless the action is allow.
        public var blocks: Bool { action != .allow }

        fileprivate init(_ v: GeowallFFI.GeowallVerdict) {
            let index: Int? = v.rule_index >= 0 ? Int(v.rule_index) : nil
            action = Action(rawValue: v.action) ?? .drop  // unknown: fail closed
            ruleIndex = index
            // Fixed C arrays arrive as tuples: read their bytes in place, up
            // to the first NUL and never past the end.
            var name = v.rule, matched = v.layer
            let ruleName = withUnsafeBytes(of: &name) { textBeforeNul($0) }
            let layerName = withUnsafeBytes(of: &matched) { textBeforeNul($0) }
            rule = index == nil ? nil : ruleName
            layer = layerName.isEmpty ? nil : layerName
        }
    }

    private let handle: UInt64
    /// The retained `CallbackBox` given to C as `context`, or nil.
    private let context: UnsafeMutableRawPointer?

    private init(handle: UInt64, context: UnsafeMutableRawPointer?) {
        self.handle = handle
        self.context = context
    }

    /// Starts the engine and returns once it reads from the TUN.
    ///
    /// - Parameters:
    ///   - tunFd: the packet tunnel's utun descriptor. The engine uses a
    ///     duplicate; the caller's stays the caller's (on iOS, the system's).
    ///   - config: the configuration as JSON text (mobile-ffi/README.md);
    ///     "{}" for the defaults.
    ///   - callbacks: kept until the engine is freed; nil for none.
    /// - Throws: `GeowallError` (e.g. `.invalidConfig`, `.io`).
    public static func start(tunFd: Int32, config: String, callbacks: GeowallCallbacks? = nil) throws -> Geowall {
        var handle: UInt64 = 0
        guard let callbacks = callbacks else {
            try config.withCString { try ok(geowall_start(tunFd, $0, nil, &handle)) }
            return Geowall(handle: handle, context: nil)
        }
        // One retain, owned by the new Geowall and released after the
        // engine is freed; C copies the struct but not what context names.
        let context = Unmanaged.passRetained(CallbackBox(callbacks)).toOpaque()
        var c = CallbackBox.cStruct(context: context)
        let status = config.withCString { geowall_start(tunFd, $0, &c, &handle) }
        guard status == 0 else {
            // Nothing started, so no callback can run any more.
            let error = GeowallError.last(status: status)
            Unmanaged<CallbackBox>.fromOpaque(context).release()
            throw error
        }
        return Geowall(handle: handle, context: context)
    }

    /// Rules without an engine, for apps that enforce in their own process:
    /// `check` and `updateBundle` work, the engine's methods throw
    /// `.invalidHandle`.
    public static func checker(config: String) throws -> Geowall {
        var handle: UInt64 = 0
        try config.withCString { try ok(geowall_checker_new($0, &handle)) }
        return Geowall(handle: handle, context: nil)
    }

    /// The library's version, e.g. "0.1.0".
    public static var version: String {
        var v = versionInfo(handle: 0)
        return withUnsafeBytes(of: &v.library) { textBeforeNul($0) }
    }

    /// The library's ABI version; the header this app was built with names
    /// its own as GEOWALL_ABI_VERSION.
    public static var abiVersion: UInt32 { versionInfo(handle: 0).abi }

    /// Stops the engine and waits for it: no callback runs after this
    /// returns. `stats()` stays readable until the object goes away.
    ///
    /// - Throws: `.stopped` if it was already stopped, `.io` if it had ended
    ///   by itself (the message says why), `.wrongThread` from a callback.
    public func stop() throws {
        try ok(geowall_stop(handle))
    }

    /// Verifies a signed rules bundle against the configuration's
    /// `trusted_keys` and the installed sequence (no rollback), and installs
    /// it: its policy applies to new decisions at once.
    ///
    /// - Returns: the sequence number installed after the call.
    /// - Throws: `.bundleRollback`, `.bundleExpired`, `.bundleBadSignature`,
    ///   `.bundleUnknownKey` or (malformed) `.bundleRejected`, with the
    ///   reason; the running rules stay.
    @discardableResult
    public func updateBundle(_ data: Data) throws -> UInt64 {
        let bytes = [UInt8](data)  // a valid pointer even when empty
        try ok(geowall_update_bundle(handle, bytes, bytes.count))
        return Geowall.versionInfo(handle: handle).bundle_sequence
    }

    /// Resolves the apps' DNS through other upstreams from the next query
    /// on (the servers of a network the device just joined), in the form of
    /// `dns_upstreams` at start (e.g. ["udp:192.0.2.53"]). Each is checked
    /// against the running rules; on an error the upstreams in use stay.
    public func setDnsUpstreams(_ upstreams: [String]) throws {
        let data = try JSONSerialization.data(withJSONObject: upstreams)
        let json = String(decoding: data, as: UTF8.self)
        try json.withCString { try ok(geowall_set_dns_upstreams(handle, $0)) }
    }

    /// Replaces the identifiers the engine looks for in cleartext, label to
    /// value (e.g. ["user_id": "1234567890"]); [:] watches for none.
    public func setIdentifiers(_ identifiers: [String: String]) throws {
        let data = try JSONSerialization.data(withJSONObject: identifiers)
        let json = String(decoding: data, as: UTF8.self)
        try json.withCString { try ok(geowall_set_identifiers(handle, $0)) }
    }

    /// Answers an `ask` rule's question (the `prompt` of an `asked` event):
    /// its held flows go on or are blocked. Not from a callback
    /// (`.wrongThread`).
    public func answer(prompt: UInt64, allow: Bool, scope: AnswerScope = .once) throws {
        try ok(geowall_answer(handle, prompt, allow, scope.rawValue))
    }

    /// The engine's numbers (the last ones once stopped).
    public func stats() throws -> GeowallStats {
        var s = GeowallFFI.GeowallStats()
        try ok(geowall_stats(handle, &s))
        return GeowallStats(s)
    }

    /// The state of the subscriptions as JSON (`geowall_subscriptions`):
    /// one object per subscription with its installed sequence, expiry,
    /// last check and last error.
    public func subscriptionsJSON() throws -> String {
        var len = 0
        try ok(geowall_subscriptions(handle, nil, 0, &len))
        var buf = [CChar](repeating: 0, count: len + 1)
        try ok(geowall_subscriptions(handle, &buf, buf.count, &len))
        return String(cString: buf)
    }

    /// What the rules say about sending to `host` (a name, or an IPv4 or
    /// IPv6 address). Nothing is resolved or sent: check a name before
    /// resolving it and each address before using it; block if either
    /// blocks.
    ///
    /// - Parameters:
    ///   - port: 0 for any.
    ///   - app: the asking app's identity, or nil.
    public func check(host: String, port: UInt16 = 0, transport: Transport = .unknown,
                      traffic: Traffic = .unknown, app: String? = nil) throws -> Verdict {
        var out = GeowallFFI.GeowallVerdict()
        let status: Int32 = host.withCString { h in
            guard let app = app else {
                return geowall_check(handle, h, port, transport.rawValue, traffic.rawValue, nil, &out)
            }
            return app.withCString { a in
                geowall_check(handle, h, port, transport.rawValue, traffic.rawValue, a, &out)
            }
        }
        try ok(status)
        return Verdict(out)
    }

    deinit {
        // Only plain values go into the closure below, not self.
        let handle = self.handle
        let context = UInt(bitPattern: self.context)
        if geowall_free(handle) == GeowallError.Code.wrongThread.rawValue {
            // The last reference went away inside a callback, on the
            // engine's thread, which cannot wait for itself: free it from
            // another thread, and only then let the callbacks go.
            DispatchQueue.global(qos: .utility).async {
                _ = geowall_free(handle)
                Geowall.releaseCallbacks(context)
            }
        } else {
            Geowall.releaseCallbacks(context)
        }
    }

    private static func releaseCallbacks(_ bits: UInt) {
        guard let context = UnsafeMutableRawPointer(bitPattern: bits) else { return }
        Unmanaged<CallbackBox>.fromOpaque(context).release()
    }

    private static func versionInfo(handle: UInt64) -> GeowallFFI.GeowallVersion {
        var v = GeowallFFI.GeowallVersion()
        _ = geowall_version(handle, &v)  // fails only for a freed handle: zeros
        return v
    }
}

/// An engine's numbers (`geowall_stats`), counted since it started.
public struct GeowallStats: Equatable, Sendable {
    /// True while the engine runs; false once stopped or ended by itself.
    public var running: Bool
    /// Flows in the table now.
    public var flows: UInt64
    /// Packets read from the TUN.
    public var tunPackets: UInt64
    /// Flows relayed to their server.
    public var opened: UInt64
    /// Flows blocked at their first packet.
    public var blocked: UInt64
    /// Open flows cut by later evidence.
    public var cut: UInt64
    /// New flows refused because the table was full.
    public var refused: UInt64
    /// Packets dropped without a flow (malformed, fragments, ...).
    public var dropped: UInt64
    /// DNS queries answered.
    public var dnsQueries: UInt64
    /// DNS queries whose name was blocked.
    public var dnsBlocked: UInt64
    /// DNS answers with addresses removed.
    public var dnsFiltered: UInt64
    /// DNS answers cached now.
    public var dnsCached: UInt64
    /// Payload bytes relayed to servers.
    public var bytesUp: UInt64
    /// Payload bytes relayed from servers.
    public var bytesDown: UInt64
    /// Sequence number of the installed rules bundle (0: none).
    public var bundleSequence: UInt64
    /// Milliseconds since the engine started.
    public var uptimeMs: UInt64
    /// New flows held for an answer to an `ask` rule.
    public var asked: UInt64
    /// New flows an `ask` rule matched that got its default at once (too
    /// many questions waiting).
    public var askedBusy: UInt64

    fileprivate init(_ s: GeowallFFI.GeowallStats) {
        running = s.running != 0
        flows = s.flows
        tunPackets = s.tun_packets
        opened = s.opened
        blocked = s.blocked
        cut = s.cut
        refused = s.refused
        dropped = s.dropped
        dnsQueries = s.dns_queries
        dnsBlocked = s.dns_blocked
        dnsFiltered = s.dns_filtered
        dnsCached = s.dns_cached
        bytesUp = s.bytes_up
        bytesDown = s.bytes_down
        bundleSequence = s.bundle_sequence
        uptimeMs = s.uptime_ms
        asked = s.asked
        askedBusy = s.asked_busy
    }
}

// ---- the bridge to C --------------------------------------------------------

/// Holds the app's callbacks for C: its address is the `context` of the C
/// struct. `Geowall.start` retains it once; the Geowall releases it after
/// the engine is freed, when no callback can run any more.
private final class CallbackBox {
    let callbacks: GeowallCallbacks

    init(_ callbacks: GeowallCallbacks) {
        self.callbacks = callbacks
    }

    /// The callbacks behind a context, borrowed (no retain).
    static func callbacks(_ context: UnsafeMutableRawPointer?) -> GeowallCallbacks? {
        guard let context = context else { return nil }
        return Unmanaged<CallbackBox>.fromOpaque(context).takeUnretainedValue().callbacks
    }

    /// The C struct. Its functions are C function pointers, so they capture
    /// nothing: each finds the app's object through `context`.
    static func cStruct(context: UnsafeMutableRawPointer) -> GeowallFFI.GeowallCallbacks {
        var c = GeowallFFI.GeowallCallbacks()
        c.context = context
        c.protect_socket = { context, fd in
            CallbackBox.callbacks(context)?.protectSocket(fd: fd) ?? false
        }
        c.app_for_flow = { context, proto, src, dst, out, capacity in
            guard let callbacks = CallbackBox.callbacks(context),
                  let src = src, let dst = dst, let out = out, capacity > 0,
                  let id = callbacks.appForFlow(proto: proto, src: String(cString: src),
                                                dst: String(cString: dst))
            else { return 0 }
            return copyUTF8(id, into: out, capacity: capacity)
        }
        c.on_event = { context, json in
            guard let callbacks = CallbackBox.callbacks(context), let json = json else { return }
            callbacks.onEvent(json: String(cString: json))
        }
        c.on_log = { context, level, message in
            guard let callbacks = CallbackBox.callbacks(context), let message = message else { return }
            callbacks.onLog(level: Geowall.LogLevel(rawValue: level) ?? .info,
                            message: String(cString: message))
        }
        return c
    }
}

/// Throws the thread's last error unless `status` is OK (0).
private func ok(_ status: Int32) throws {
    if status != 0 {
        throw GeowallError.last(status: status)
    }
}

/// The UTF-8 text of `bytes` up to its first NUL (or its end).
private func textBeforeNul(_ bytes: UnsafeRawBufferPointer) -> String {
    let end = bytes.firstIndex(of: 0) ?? bytes.count
    return String(decoding: bytes[..<end], as: UTF8.self)
}

/// Copies `text` as UTF-8 (no NUL) into `out`, at most `capacity` bytes and
/// never half a character; returns the bytes written.
private func copyUTF8(_ text: String, into out: UnsafeMutablePointer<CChar>, capacity: Int) -> Int {
    let bytes = Array(text.utf8)
    var n = min(bytes.count, capacity)
    // Back up over continuation bytes (10xxxxxx) to a character's start.
    while n > 0, n < bytes.count, bytes[n] & 0xC0 == 0x80 {
        n -= 1
    }
    guard n > 0 else { return 0 }
    bytes.withUnsafeBytes { raw in
        UnsafeMutableRawPointer(out).copyMemory(from: raw.baseAddress!, byteCount: n)
    }
    return n
}
