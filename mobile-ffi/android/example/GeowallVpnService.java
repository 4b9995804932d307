// GeowallVpnService.java: an example VpnService that runs geowall as the
// device's firewall. Not a finished app: the addresses and the DNS upstream
// below are placeholders, see the comments.
// SPDX-License-Identifier: MIT OR Apache-2.0
package org.geowall.example;

import android.content.Intent;
import android.net.ConnectivityManager;
import android.net.VpnService;
import android.os.Build;
import android.os.ParcelFileDescriptor;
import android.os.Process;
import android.util.Log;
import java.io.ByteArrayOutputStream;
import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import org.geowall.Geowall;
import org.geowall.GeowallException;

/**
 * Declared in the manifest with {@code android:permission=
 * "android.permission.BIND_VPN_SERVICE"} and an intent filter for {@code
 * android.net.VpnService}; an activity calls {@code VpnService.prepare()}
 * (and asks the user) before starting it.
 */
public final class GeowallVpnService extends VpnService {
    private static final String TAG = "GeowallVpn";

    // Phones have no /etc/resolv.conf, so the configuration names a
    // resolver, here DNS over HTTPS: "https:IP[:PORT]@NAME" connects to IP
    // and checks that the certificate is for NAME. 192.0.2.53 and
    // dns.example are documentation placeholders that answer nothing: put a
    // resolver you trust there (one whose address falls under a
    // jurisdiction the policy blocks is refused at start). trusted_keys
    // lists the hex Ed25519 public keys that sign your rules bundles;
    // without one, every bundle is refused.
    //
    // To resolve through each network's own servers instead, follow the
    // underlying network (ConnectivityManager.registerDefaultNetworkCallback)
    // and, in onLinkPropertiesChanged, hand its servers to the engine:
    // engine.setDnsUpstreams("[\"udp:" + a.getHostAddress() + "\", ...]")
    // for each address a of LinkProperties.getDnsServers(); from the next
    // query on geowall asks them (a server the rules block is refused and
    // the ones in use stay).
    private static final String CONFIG = "{"
            + "\"preset\": \"clubhouse\","
            + "\"dns_upstreams\": [\"https:192.0.2.53@dns.example\"],"
            + "\"trusted_keys\": [],"
            + "\"mtu\": 1500"
            + "}";

    /** A signed rules bundle shipped in the app's assets, if any. */
    private static final String BUNDLE_ASSET = "geowall.bundle";

    private ParcelFileDescriptor tun;
    private Geowall engine;

    @Override
    public int onStartCommand(Intent intent, int flags, int startId) {
        start();
        return START_STICKY;
    }

    private synchronized void start() {
        if (engine != null) {
            return;
        }
        // 198.18.0.0/15 is the benchmarking range and 2001:db8::/32 the
        // documentation range: placeholders chosen for this example. An app
        // picks addresses of its own that do not clash with its networks.
        tun = new Builder()
                .setSession("geowall")
                .setMtu(1500)
                .addAddress("198.18.0.1", 24)
                .addAddress("2001:db8::1", 64)
                .addRoute("0.0.0.0", 0)
                .addRoute("::", 0)
                // Any address routed into the tunnel will do: geowall
                // answers every DNS query that enters it.
                .addDnsServer("198.18.0.2")
                .establish();
        if (tun == null) {
            Log.e(TAG, "not prepared: call VpnService.prepare() from an activity first");
            stopSelf();
            return;
        }
        try {
            // Returns once the engine reads (loading the rules takes a
            // moment: a real app may start it off the main thread). The
            // engine works on a duplicate of the descriptor; ours is closed
            // in shutdown().
            engine = Geowall.start(tun.getFd(), CONFIG, new Callbacks());
        } catch (GeowallException e) {
            Log.e(TAG, "geowall did not start (status " + e.code + "): " + e.getMessage());
            shutdown();
            stopSelf();
            return;
        }
        loadBundle();
    }

    private void loadBundle() {
        byte[] bundle;
        try (InputStream in = getAssets().open(BUNDLE_ASSET)) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] chunk = new byte[16384];
            int n;
            while ((n = in.read(chunk)) != -1) {
                out.write(chunk, 0, n);
            }
            bundle = out.toByteArray();
        } catch (FileNotFoundException e) {
            return; // none shipped: the preset stays
        } catch (IOException e) {
            Log.w(TAG, "cannot read " + BUNDLE_ASSET, e);
            return;
        }
        try {
            Log.i(TAG, "rules bundle " + engine.updateBundle(bundle) + " installed");
        } catch (GeowallException e) {
            // BUNDLE_ROLLBACK (an update seen twice: harmless),
            // BUNDLE_EXPIRED, BUNDLE_BAD_SIGNATURE (forged or damaged),
            // BUNDLE_UNKNOWN_KEY, BUNDLE_REJECTED (malformed). The running
            // rules stay.
            Log.w(TAG, "rules bundle refused (status " + e.code + "): " + e.getMessage());
        }
    }

    @Override
    public void onRevoke() {
        shutdown(); // the user turned the VPN off, or another one took over
        super.onRevoke();
    }

    @Override
    public void onDestroy() {
        shutdown();
        super.onDestroy();
    }

    /** Engine first (it stops and waits for its thread), then the TUN. */
    private synchronized void shutdown() {
        if (engine != null) {
            try {
                engine.close();
            } catch (GeowallException e) {
                Log.w(TAG, "geowall: " + e.getMessage());
            }
            engine = null;
        }
        if (tun != null) {
            try {
                tun.close();
            } catch (IOException e) {
                Log.w(TAG, "closing the TUN", e);
            }
            tun = null;
        }
    }

    /**
     * Runs on the engine's thread, one call at a time, and must return
     * quickly. shutdown() waits for that thread while holding this
     * service's lock, so nothing here may take it.
     */
    private final class Callbacks implements Geowall.Callbacks {
        @Override
        public boolean protectSocket(int fd) {
            return protect(fd); // keep the engine's own sockets out of the tunnel
        }

        @Override
        public String appForFlow(int protocol, String source, String destination) {
            if (Build.VERSION.SDK_INT < Build.VERSION_CODES.Q) {
                return null; // getConnectionOwnerUid is API 29
            }
            try {
                ConnectivityManager cm = getSystemService(ConnectivityManager.class);
                int uid = cm.getConnectionOwnerUid(protocol, address(source), address(destination));
                return uid == Process.INVALID_UID ? null : getPackageManager().getNameForUid(uid);
            } catch (IOException | RuntimeException e) {
                return null; // unknown: rules about apps do not match
            }
        }

        @Override
        public void onEvent(String json) {
            Log.i(TAG, json);
        }

        @Override
        public void onLog(int level, String message) {
            if (level == Geowall.LOG_ERROR) {
                Log.e(TAG, message);
            } else if (level == Geowall.LOG_WARN) {
                Log.w(TAG, message);
            } else {
                Log.i(TAG, message);
            }
        }
    }

    /** "IP:PORT" or "[IPv6]:PORT", as geowall writes them (never a name). */
    private static InetSocketAddress address(String text) throws IOException {
        int colon = text.lastIndexOf(':');
        String host = text.substring(0, colon).replace("[", "").replace("]", "");
        int port = Integer.parseInt(text.substring(colon + 1));
        // A numeric literal: parsed, not looked up.
        return new InetSocketAddress(InetAddress.getByName(host), port);
    }
}
