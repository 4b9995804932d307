package org.geowall;

/**
 * The geowall engine inside an app: a firewall on the app's TUN device
 * (Android {@code VpnService}), and rule checks without an engine.
 *
 * <p>Thread-safe: any method may be called from any thread. Callbacks run on
 * the engine's own thread, one at a time; they must return quickly and must
 * not call {@link #stop()} or {@link #close()} (those throw
 * {@link GeowallException#WRONG_THREAD} there). An engine must be closed
 * (which stops it) to free its native memory.
 */
public final class Geowall implements AutoCloseable {
    static {
        System.loadLibrary("geowall_ffi");
    }

    /** Allow the traffic ({@code action} in check results). */
    public static final int ALLOW = 0;
    /** Block silently. */
    public static final int DROP = 1;
    /** Block with an answer (TCP reset, ICMP unreachable). */
    public static final int REJECT = 2;

    /** Transports for {@link #check}: IP protocol numbers, 0 if unknown. */
    public static final int TCP = 6, UDP = 17, ICMP = 1;

    /** Traffic classes for {@link #check}. */
    public static final int TRAFFIC_UNKNOWN = 0, TRAFFIC_DNS = 1, TRAFFIC_WEB = 2,
            TRAFFIC_MEDIA = 3, TRAFFIC_PING = 4, TRAFFIC_OTHER = 5;

    /**
     * How far an answer to an {@code ask} rule reaches ({@link #answer}): the
     * flows held under the question; every flow of the app the rule asks
     * about while the engine runs; the app and the destination, kept in
     * {@code state_dir} across restarts.
     */
    public static final int ANSWER_ONCE = 0, ANSWER_APP = 1, ANSWER_ALWAYS = 2;

    /** Log levels given to {@link Callbacks#onLog}. */
    public static final int LOG_ERROR = 1, LOG_WARN = 2, LOG_INFO = 3;

    /** What the app does for the engine; every method has a default. */
    public interface Callbacks {
        /**
         * Keeps an upstream socket out of the tunnel before it connects: call
         * {@code VpnService.protect(fd)} here. Return false to refuse it.
         */
        default boolean protectSocket(int fd) {
            return true;
        }

        /**
         * The app that owns a new flow, e.g. from
         * {@code ConnectivityManager.getConnectionOwnerUid}; null if unknown.
         * {@code protocol} is 6 (TCP) or 17 (UDP); addresses are
         * {@code IP:PORT} or {@code [IPv6]:PORT}.
         */
        default String appForFlow(int protocol, String source, String destination) {
            return null;
        }

        /**
         * A decision, as one JSON object. Kind {@code asked} is an {@code ask}
         * rule's question, the app's prompt (its {@code prompt} number, {@code
         * app}, {@code server}, {@code rule}): answer it with {@link #answer}
         * from another thread. Kind {@code answered} says it was settled.
         */
        default void onEvent(String json) {}

        /** A message for the app's log. */
        default void onLog(int level, String message) {}
    }

    private final long handle;
    private boolean closed;

    private Geowall(long handle) {
        this.handle = handle;
    }

    /**
     * Starts the engine on a TUN descriptor (e.g. {@code
     * ParcelFileDescriptor.getFd()} of {@code VpnService.Builder.establish()});
     * the engine uses a duplicate, the caller keeps its own.
     *
     * @param configJson the configuration (see mobile-ffi/README.md); "{}" for
     *     the defaults
     * @param callbacks may be null
     */
    public static Geowall start(int tunFd, String configJson, Callbacks callbacks)
            throws GeowallException {
        return new Geowall(nativeStart(tunFd, configJson, callbacks));
    }

    /** Rules without an engine, for apps that enforce in their own process. */
    public static Geowall checker(String configJson) throws GeowallException {
        return new Geowall(nativeCheckerNew(configJson));
    }

    /** Stops the engine; no callback runs after this returns. */
    public void stop() throws GeowallException {
        nativeStop(handle);
    }

    /**
     * Verifies and installs a signed rules bundle; returns its sequence. A
     * refused bundle changes nothing; the code says why:
     * {@link GeowallException#BUNDLE_ROLLBACK}, {@link GeowallException#BUNDLE_EXPIRED},
     * {@link GeowallException#BUNDLE_BAD_SIGNATURE}, {@link GeowallException#BUNDLE_UNKNOWN_KEY},
     * {@link GeowallException#BUNDLE_REJECTED} (malformed).
     */
    public long updateBundle(byte[] bundle) throws GeowallException {
        return nativeUpdateBundle(handle, bundle);
    }

    /**
     * Answers an {@code ask} rule's question (the {@code prompt} of an
     * {@code asked} event): its held flows go on or are blocked. Not from a
     * callback ({@link GeowallException#WRONG_THREAD}).
     *
     * @param scope {@link #ANSWER_ONCE}, {@link #ANSWER_APP} or {@link #ANSWER_ALWAYS}
     */
    public void answer(long prompt, boolean allow, int scope) throws GeowallException {
        nativeAnswer(handle, prompt, allow, scope);
    }

    /**
     * Resolves the apps' DNS through other upstreams from the next query on, e.g. the servers of a
     * network the device just joined ({@code LinkProperties.getDnsServers()}): a JSON array such as
     * {@code ["udp:192.0.2.53"]}, in the form of {@code dns_upstreams} at start. Each is checked
     * against the running rules; on an error the upstreams in use stay.
     */
    public void setDnsUpstreams(String upstreamsJson) throws GeowallException {
        nativeSetDnsUpstreams(handle, upstreamsJson);
    }

    /** Identifiers to watch for in cleartext: a JSON object of label to value. */
    public void setIdentifiers(String identifiersJson) throws GeowallException {
        nativeSetIdentifiers(handle, identifiersJson);
    }

    /**
     * The engine's numbers as JSON (the last ones once stopped), with {@code subscriptions}: each
     * subscription's installed sequence, expiry, last check and last error.
     */
    public String stats() throws GeowallException {
        return nativeStats(handle);
    }

    /**
     * What the rules say about sending to {@code host} (a name or an address):
     * JSON with {@code action} ("allow" or "block"), {@code block} ("drop",
     * "reject" or null), {@code rule} and {@code layer}. Nothing is resolved
     * or sent.
     *
     * @param port 0 for any
     * @param transport {@link #TCP}, {@link #UDP}, {@link #ICMP} or 0
     * @param traffic one of the {@code TRAFFIC_} constants
     * @param app the asking app's identity, or null
     */
    public String check(String host, int port, int transport, int traffic, String app)
            throws GeowallException {
        return nativeCheck(handle, host, port, transport, traffic, app);
    }

    /** The library's version and ABI, as JSON. */
    public static String version() throws GeowallException {
        return nativeVersion();
    }

    /** Stops the engine if it runs and frees it; later calls throw. */
    @Override
    public synchronized void close() throws GeowallException {
        if (closed) {
            return;
        }
        closed = true;
        nativeFree(handle);
    }

    private static native long nativeStart(int tunFd, String configJson, Callbacks callbacks)
            throws GeowallException;

    private static native long nativeCheckerNew(String configJson) throws GeowallException;

    private static native void nativeStop(long handle) throws GeowallException;

    private static native void nativeFree(long handle) throws GeowallException;

    private static native long nativeUpdateBundle(long handle, byte[] bundle)
            throws GeowallException;

    private static native void nativeSetIdentifiers(long handle, String json)
            throws GeowallException;

    private static native void nativeSetDnsUpstreams(long handle, String json)
            throws GeowallException;

    private static native String nativeStats(long handle) throws GeowallException;

    private static native void nativeAnswer(long handle, long prompt, boolean allow, int scope)
            throws GeowallException;

    private static native String nativeCheck(
            long handle, String host, int port, int transport, int traffic, String app)
            throws GeowallException;

    private static native String nativeVersion() throws GeowallException;
}
