package org.geowall;

/** A geowall call failed: {@link #code} is the C ABI's status, the message says why. */
public final class GeowallException extends Exception {
    private static final long serialVersionUID = 1L;

    /** A required argument was null. */
    public static final int NULL_POINTER = 1;
    /** A string was not valid text. */
    public static final int INVALID_UTF8 = 2;
    /** The configuration JSON was refused. */
    public static final int INVALID_CONFIG = 3;
    /** An argument was out of range. */
    public static final int INVALID_ARGUMENT = 4;
    /** The engine or checker was freed (or never existed). */
    public static final int INVALID_HANDLE = 5;
    /** The engine was stopped. */
    public static final int STOPPED = 6;
    /** A rules bundle was refused as malformed; the running rules stay. */
    public static final int BUNDLE_REJECTED = 7;
    /** The TUN or a socket failed. */
    public static final int IO = 8;
    /** Called from a callback, on the engine's own thread. */
    public static final int WRONG_THREAD = 9;
    /** A bug in geowall. */
    public static final int INTERNAL = 10;
    /** A rules bundle was not newer than the installed one; the running rules stay. */
    public static final int BUNDLE_ROLLBACK = 11;
    /** A rules bundle had expired; the running rules stay. */
    public static final int BUNDLE_EXPIRED = 12;
    /** A rules bundle's signature was missing or wrong; the running rules stay. */
    public static final int BUNDLE_BAD_SIGNATURE = 13;
    /** A rules bundle was signed by an untrusted key; the running rules stay. */
    public static final int BUNDLE_UNKNOWN_KEY = 14;
    /**
     * A subscription stopped the start: nothing kept and the first fetch failed, a kept
     * bundle was refused, or the rules block its update server.
     */
    public static final int SUBSCRIPTION = 15;

    /** The status code (one of the constants above). */
    public final int code;

    /** Made by the native layer. */
    public GeowallException(int code, String message) {
        super(message);
        this.code = code;
    }
}
