// An ultracore_es client in Java with JDBC (Debian: libpostgresql-jdbc-java).
//
// Opens an account, deposits with optimistic concurrency (a conflict,
// caught by its SQLSTATE UE001, is answered by reading the version again),
// and follows the log in commit order from a checkpoint it keeps as longs.
// test/t/015_clients.pl runs it:
//
//   java -cp /usr/share/java/postgresql.jar JdbcClient.java JDBC_URL ACCOUNT_ID
import java.sql.*;

public class JdbcClient {
    static String account;

    /** Append a deposit at the version the caller read; -1 on a conflict. */
    static long deposit(Connection conn, long amount, long expectedVersion) throws SQLException {
        try (PreparedStatement st = conn.prepareStatement(
                "SELECT version FROM es_append('Account', ?, 'ACCOUNT_BALANCE_UPDATED', ?::jsonb, ?)")) {
            st.setString(1, account);
            st.setString(2, "{\"amount\": " + amount + "}");
            st.setLong(3, expectedVersion);
            try (ResultSet rs = st.executeQuery()) {
                rs.next();
                return rs.getLong(1);
            }
        } catch (SQLException e) {
            if (!"UE001".equals(e.getSQLState()))  // the driver has no class for UE001: test the SQLSTATE
                throw e;
            System.out.println("conflict: " + e.getMessage());
            return -1;
        }
    }

    static long versionOf(Connection conn) throws SQLException {
        try (PreparedStatement st = conn.prepareStatement("SELECT es_aggregate_version(?)")) {
            st.setString(1, account);
            try (ResultSet rs = st.executeQuery()) {
                rs.next();
                return rs.getLong(1);
            }
        }
    }

    public static void main(String[] args) throws SQLException {
        account = args[1];
        try (Connection conn = DriverManager.getConnection(args[0]);
             Connection other = DriverManager.getConnection(args[0])) {
            try (PreparedStatement st = conn.prepareStatement(
                    "SELECT es_append('Account', ?, 'ACCOUNT_OPENED', '{\"owner\": \"Bo\"}', 0)")) {
                st.setString(1, account);
                st.execute();
            }
            long seen = versionOf(conn);
            // Another teller deposits meanwhile.
            try (PreparedStatement st = other.prepareStatement(
                    "SELECT es_append('Account', ?, 'ACCOUNT_BALANCE_UPDATED', '{\"amount\": 5}', ?)")) {
                st.setString(1, account);
                st.setLong(2, seen);
                st.execute();
            }
            long version = deposit(conn, 10, seen);
            if (version < 0)
                version = deposit(conn, 10, versionOf(conn));  // read again, decide again
            System.out.println("deposited at version " + version);

            // A reader in commit order: its checkpoint (tx_id, position) kept as longs.
            long tx = 0, pos = 0, total = 0;
            try (PreparedStatement st = conn.prepareStatement(
                    "SELECT tx_id::text, position, aggregate_id, (data->>'amount')::bigint FROM es_read_all("
                    + "after_tx_id => ?, after_position => ?, aggregate_type => 'Account', max_count => 2)")) {
                while (true) {
                    st.setLong(1, tx);
                    st.setLong(2, pos);
                    int rows = 0;
                    try (ResultSet rs = st.executeQuery()) {
                        while (rs.next()) {
                            rows++;
                            if (account.equals(rs.getString(3)))
                                total += rs.getLong(4);
                            tx = Long.parseLong(rs.getString(1));
                            pos = rs.getLong(2);
                        }
                    }
                    if (rows == 0)
                        break;
                }
            }
            System.out.println("total deposited " + total);
        }
    }
}
