// PacketTunnelProvider.swift: an example packet tunnel extension that runs
// geowall as the device's firewall. Not a finished app: the addresses and
// the DNS upstream below are placeholders, see the comments.
// SPDX-License-Identifier: MIT OR Apache-2.0
//
// Memory: iOS stops a packet tunnel extension that uses more than about
// 50 MiB. The engine's flow table, DNS cache and rules count against that,
// so the configuration below asks for fewer flows than the default 65,536;
// measure with Instruments before raising it.

import Darwin
import NetworkExtension
import os.log

// Geowall.swift (and the GeowallFFI xcframework) are part of this target.

class PacketTunnelProvider: NEPacketTunnelProvider {
    private let log = OSLog(subsystem: "org.geowall.example", category: "tunnel")
    private var engine: Geowall?

    override func startTunnel(options: [String: NSObject]?,
                              completionHandler: @escaping (Error?) -> Void) {
        // Nothing is tunnelled to a server: the "remote" is this device.
        let settings = NEPacketTunnelNetworkSettings(tunnelRemoteAddress: "127.0.0.1")
        // 198.18.0.0/15 is the benchmarking range and 2001:db8::/32 the
        // documentation range: placeholders for this example. An app picks
        // addresses of its own that do not clash with the networks it joins.
        let ipv4 = NEIPv4Settings(addresses: ["198.18.0.1"], subnetMasks: ["255.255.255.0"])
        ipv4.includedRoutes = [NEIPv4Route.default()]
        settings.ipv4Settings = ipv4
        let ipv6 = NEIPv6Settings(addresses: ["2001:db8::1"], networkPrefixLengths: [NSNumber(value: 64)])
        ipv6.includedRoutes = [NEIPv6Route.default()]
        settings.ipv6Settings = ipv6
        // Any address inside the tunnel will do: geowall answers every DNS
        // query that enters it, whatever its destination.
        let dns = NEDNSSettings(servers: ["198.18.0.2"])
        dns.matchDomains = [""]  // all names
        settings.dnsSettings = dns
        settings.mtu = NSNumber(value: 1500)

        setTunnelNetworkSettings(settings) { error in
            if let error = error {
                completionHandler(error)
                return
            }
            do {
                guard let fd = PacketTunnelProvider.utunDescriptor() else {
                    throw NSError(domain: "org.geowall.example", code: 1, userInfo: [
                        NSLocalizedDescriptionKey: "no utun descriptor found in this process",
                    ])
                }
                let config = try PacketTunnelProvider.config()
                // geowall reads and writes the utun itself: do not also read
                // packetFlow.
                self.engine = try Geowall.start(tunFd: fd, config: config,
                                                callbacks: TunnelCallbacks(log: self.log))
                completionHandler(nil)
            } catch {
                os_log("geowall did not start: %{public}@", log: self.log, type: .error,
                       String(describing: error))
                completionHandler(error)
            }
        }
    }

    override func stopTunnel(with reason: NEProviderStopReason, completionHandler: @escaping () -> Void) {
        do {
            try engine?.stop()
        } catch {
            // E.g. the engine had already ended by itself: the message says why.
            os_log("geowall: %{public}@", log: log, type: .error, String(describing: error))
        }
        engine = nil  // the last reference: deinit frees the engine
        completionHandler()
    }

    /// The configuration, as JSON text.
    private static func config() throws -> String {
        let config: [String: Any] = [
            "preset": "clubhouse",
            // Phones have no /etc/resolv.conf, so name a resolver, here DNS
            // over HTTPS: "https:IP[:PORT]@NAME" connects to IP and checks
            // that the certificate is for NAME. 192.0.2.53 and dns.example
            // are documentation placeholders that answer nothing: put a
            // resolver you trust there (one whose address falls under a
            // jurisdiction the policy blocks is refused at start).
            "dns_upstreams": ["https:192.0.2.53@dns.example"],
            "mtu": 1500,
            "max_flows": 4096,  // see the memory note at the top
        ]
        let data = try JSONSerialization.data(withJSONObject: config)
        return String(decoding: data, as: UTF8.self)
    }

    /// The descriptor of this extension's utun interface. NetworkExtension
    /// does not hand it out, but the socket is open in this process: look
    /// at the low descriptors for a kernel-control socket that answers the
    /// utun "interface name" option with a "utun..." name.
    private static func utunDescriptor() -> Int32? {
        // The iOS SDK does not give these to Swift; the values are those
        // of macOS's <sys/kern_control.h> and <net/if_utun.h>.
        let sysprotoControl: Int32 = 2  // SYSPROTO_CONTROL
        let utunOptIfname: Int32 = 2    // UTUN_OPT_IFNAME
        var name = [UInt8](repeating: 0, count: 16)  // IFNAMSIZ
        for fd: Int32 in 0...1024 {
            var length = socklen_t(name.count)
            let rc = name.withUnsafeMutableBytes { buffer in
                getsockopt(fd, sysprotoControl, utunOptIfname, buffer.baseAddress, &length)
            }
            guard rc == 0 else { continue }  // closed, or not a utun socket
            let text = name.prefix(Int(length)).prefix(while: { $0 != 0 })
            if String(decoding: text, as: UTF8.self).hasPrefix("utun") {
                return fd
            }
        }
        return nil
    }
}

/// What the engine asks of the extension; runs on the engine's thread.
private final class TunnelCallbacks: GeowallCallbacks {
    private let log: OSLog

    init(log: OSLog) {
        self.log = log
    }

    // On iOS the extension's own sockets never enter its own tunnel, so the
    // engine's upstream sockets need no protecting: keep them all.
    func protectSocket(fd: Int32) -> Bool {
        true
    }

    func onEvent(json: String) {
        os_log("%{public}@", log: log, type: .info, json)
    }

    func onLog(level: Geowall.LogLevel, message: String) {
        let type: OSLogType = level == .error ? .error : (level == .warn ? .default : .info)
        os_log("%{public}@", log: log, type: type, message)
    }
}
