import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.concurrent.atomic.AtomicLong;
import org.geowall.Geowall;
import org.geowall.GeowallException;

/**
 * A Java app embedding geowall through its JNI layer, driven line by line
 * by tests/jni.rs: "java JniHost FD" runs the engine on TUN descriptor FD.
 * Commands: start CONFIG_FILE, check HOST PORT PROTO TRAFFIC, stats, stop,
 * free, abuse, quit; each answers one line, "ok ..." or "err CODE MESSAGE".
 */
public final class JniHost {
    static final AtomicLong protectedSockets = new AtomicLong();
    static final AtomicLong events = new AtomicLong();
    static final AtomicLong eventsWithApp = new AtomicLong();

    static final Geowall.Callbacks CALLBACKS = new Geowall.Callbacks() {
        @Override
        public boolean protectSocket(int fd) {
            // Android would call VpnService.protect(fd); here the
            // configuration's fwmark keeps the socket out of the TUN.
            protectedSockets.incrementAndGet();
            return true;
        }

        @Override
        public String appForFlow(int protocol, String source, String destination) {
            return "org.example.java";
        }

        @Override
        public void onEvent(String json) {
            events.incrementAndGet();
            if (json.contains("\"app\":\"org.example.java\"")) {
                eventsWithApp.incrementAndGet();
            }
            System.err.println("event " + json);
        }

        @Override
        public void onLog(int level, String message) {
            System.err.println("log " + level + " " + message);
        }
    };

    interface Call {
        void run() throws Exception;
    }

    static int failures;

    static void expectCode(String what, int code, Call c) {
        try {
            c.run();
            System.out.println("abuse " + what + ": no exception, want code " + code);
            failures++;
        } catch (GeowallException e) {
            if (e.code != code || e.getMessage() == null || e.getMessage().isEmpty()) {
                System.out.println("abuse " + what + ": code " + e.code + " (" + e.getMessage() + "), want " + code);
                failures++;
            }
        } catch (Exception e) {
            System.out.println("abuse " + what + ": " + e);
            failures++;
        }
    }

    public static void main(String[] args) throws Exception {
        int fd = Integer.parseInt(args[0]);
        System.out.println("tun ready");
        Geowall engine = null;
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            String[] w = line.split(" ", 2);
            final Geowall e = engine;
            try {
                switch (w[0]) {
                    case "start":
                        String cfg = new String(Files.readAllBytes(Paths.get(w[1])), StandardCharsets.UTF_8);
                        engine = Geowall.start(fd, cfg, CALLBACKS);
                        System.out.println("ok");
                        break;
                    case "check":
                        String[] a = w[1].split(" ");
                        System.out.println("ok " + e.check(a[0], Integer.parseInt(a[1]),
                                Integer.parseInt(a[2]), Integer.parseInt(a[3]), null));
                        break;
                    case "bundle":
                        System.out.println("ok " + e.updateBundle(Files.readAllBytes(Paths.get(w[1]))));
                        break;
                    case "stats":
                        System.out.println("ok " + e.stats() + " protected=" + protectedSockets.get()
                                + " events=" + events.get() + " events_with_app=" + eventsWithApp.get());
                        break;
                    case "version":
                        System.out.println("ok " + Geowall.version());
                        break;
                    case "stop":
                        e.stop();
                        System.out.println("ok");
                        break;
                    case "free":
                        e.close();
                        System.out.println("ok");
                        break;
                    case "abuse":
                        failures = 0;
                        expectCode("start null config", 1, () -> Geowall.start(fd, null, null));
                        expectCode("start invalid json", 3, () -> Geowall.start(fd, "{not json", null));
                        expectCode("start negative fd", 4, () -> Geowall.start(-1, "{}", null));
                        expectCode("checker unknown preset", 3, () -> Geowall.checker("{\"preset\":\"nope\"}"));
                        expectCode("check null host", 1, () -> e.check(null, 443, 6, 0, null));
                        expectCode("check bad port", 4, () -> e.check("example.org", 70000, 6, 0, null));
                        expectCode("check bad traffic", 4, () -> e.check("example.org", 443, 6, 42, null));
                        expectCode("bundle null", 1, () -> e.updateBundle(null));
                        expectCode("bundle garbage", 7, () -> e.updateBundle(new byte[] {1, 2, 3}));
                        expectCode("ids not an object", 4, () -> e.setIdentifiers("[1]"));
                        expectCode("dns null", 1, () -> e.setDnsUpstreams(null));
                        expectCode("dns not an array", 4, () -> e.setDnsUpstreams("{}"));
                        expectCode("dns bad upstream", 4, () -> e.setDnsUpstreams("[\"8.8.8.8\"]"));
                        try (Geowall c = Geowall.checker("{\"preset\":\"clubhouse\"}")) {
                            String v = c.check("agora.io", 443, Geowall.UDP, Geowall.TRAFFIC_MEDIA, null);
                            if (!v.contains("\"action\":\"block\"")) {
                                System.out.println("abuse: clubhouse allows media to agora.io: " + v);
                                failures++;
                            }
                            expectCode("checker stop", 5, c::stop);
                        }
                        System.out.println(failures == 0 ? "ok abuse" : "err " + failures + " abuse failures");
                        break;
                    case "quit":
                        return;
                    default:
                        System.out.println("err -1 unknown command " + w[0]);
                }
            } catch (GeowallException ex) {
                System.out.println("err " + ex.code + " " + ex.getMessage());
            }
        }
    }
}
