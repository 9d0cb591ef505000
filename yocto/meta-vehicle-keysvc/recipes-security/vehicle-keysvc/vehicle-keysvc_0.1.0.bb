SUMMARY = "TPM 2.0 key service for the webinos PZP, gated by CAN vehicle state"
DESCRIPTION = "Keeps the PZP's private keys in the TPM, bound to a PCR policy, \
               and signs with them over the system bus only while the vehicle \
               state read from CAN allows it."
SECTION = "security"
LICENSE = "MIT"
CVE_PRODUCT = "vehicle-keysvc"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# The recipe builds the checkout that contains this layer.
# Set EXTERNALSRC:pn-vehicle-keysvc to build another checkout.
EXTERNALSRC ?= "${VEHICLE_KEYSVC_SRCDIR}"
EXTERNALSRC_BUILD ?= "${B}"

inherit externalsrc python_setuptools_build_meta systemd useradd features_check

REQUIRED_DISTRO_FEATURES = "systemd tpm2"

# The service's user, and the user the webinos PZP runs as. The D-Bus
# policy lets only the first own the bus name and only the second and root
# call the service.
VEHICLE_KEYSVC_USER ?= "vehicle-keysvc"
VEHICLE_KEYSVC_PZP_USER ?= "webinos"

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--force --system tss"
USERADD_PARAM:${PN} = "--system --no-create-home --home-dir /nonexistent \
                       --shell /sbin/nologin --user-group --groups tss \
                       ${VEHICLE_KEYSVC_USER}"

SYSTEMD_SERVICE:${PN} = "vehicle-keysvc.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/packaging/systemd/vehicle-keysvc.service ${D}${systemd_system_unitdir}/
    sed -i -e 's/^User=vehicle-keysvc$/User=${VEHICLE_KEYSVC_USER}/' \
        -e 's/^Group=vehicle-keysvc$/Group=${VEHICLE_KEYSVC_USER}/' \
        ${D}${systemd_system_unitdir}/vehicle-keysvc.service

    install -d ${D}${datadir}/dbus-1/system.d
    install -m 0644 ${S}/packaging/dbus/org.webinos.KeyStorage1.conf ${D}${datadir}/dbus-1/system.d/
    sed -i -e 's/<policy user="vehicle-keysvc">/<policy user="${VEHICLE_KEYSVC_USER}">/' \
        -e 's/<policy user="webinos">/<policy user="${VEHICLE_KEYSVC_PZP_USER}">/' \
        ${D}${datadir}/dbus-1/system.d/org.webinos.KeyStorage1.conf

    install -d ${D}${datadir}/dbus-1/system-services
    install -m 0644 ${S}/packaging/dbus/org.webinos.KeyStorage1.service ${D}${datadir}/dbus-1/system-services/
    sed -i -e 's/^User=vehicle-keysvc$/User=${VEHICLE_KEYSVC_USER}/' \
        ${D}${datadir}/dbus-1/system-services/org.webinos.KeyStorage1.service

    install -d ${D}${datadir}/dbus-1/interfaces
    install -m 0644 ${S}/packaging/dbus/org.webinos.KeyStorage1.xml ${D}${datadir}/dbus-1/interfaces/

    install -d ${D}${sysconfdir}/vehicle-keysvc
    install -m 0644 ${S}/config.example.toml ${D}${sysconfdir}/vehicle-keysvc/keysvc.toml

    install -d ${D}${datadir}/vehicle-keysvc/profiles
    install -m 0644 ${S}/dbc/reference.profile.toml ${D}${datadir}/vehicle-keysvc/profiles/reference.toml
    install -m 0644 ${S}/dbc/vehicle.dbc ${D}${datadir}/vehicle-keysvc/profiles/
    install -m 0644 ${S}/dbc/ford_gt350.profile.toml ${D}${datadir}/vehicle-keysvc/profiles/ford_gt350.toml
    install -m 0644 ${S}/dbc/ford_lincoln_base_pt.dbc ${D}${datadir}/vehicle-keysvc/profiles/
    install -m 0644 ${S}/dbc/chevrolet_camaro.profile.toml ${D}${datadir}/vehicle-keysvc/profiles/chevrolet_camaro.toml
    install -m 0644 ${S}/dbc/gm_global_a_powertrain_generated.dbc ${D}${datadir}/vehicle-keysvc/profiles/
    install -m 0644 ${S}/dbc/scion.profile.toml ${D}${datadir}/vehicle-keysvc/profiles/scion.toml
    install -m 0644 ${S}/dbc/toyota_iQ_2009_can.dbc ${D}${datadir}/vehicle-keysvc/profiles/
    install -m 0644 ${S}/dbc/subaru_wrx.profile.toml ${D}${datadir}/vehicle-keysvc/profiles/subaru_wrx.toml
    install -m 0644 ${S}/dbc/subaru_outback_2015_generated.dbc ${D}${datadir}/vehicle-keysvc/profiles/
    install -m 0644 ${S}/dbc/hyundai_genesis.profile.toml ${D}${datadir}/vehicle-keysvc/profiles/hyundai_genesis.toml
    install -m 0644 ${S}/dbc/hyundai_i30_2014.dbc ${D}${datadir}/vehicle-keysvc/profiles/
    install -m 0644 ${S}/dbc/vw_mqb.profile.toml ${D}${datadir}/vehicle-keysvc/profiles/vw_mqb.toml
    install -m 0644 ${S}/dbc/vw_mqb.dbc ${D}${datadir}/vehicle-keysvc/profiles/
    install -m 0644 ${S}/dbc/SOURCES.md ${D}${datadir}/vehicle-keysvc/profiles/
}

FILES:${PN} += "\
    ${systemd_system_unitdir}/vehicle-keysvc.service \
    ${datadir}/dbus-1/system.d/org.webinos.KeyStorage1.conf \
    ${datadir}/dbus-1/system-services/org.webinos.KeyStorage1.service \
    ${datadir}/dbus-1/interfaces/org.webinos.KeyStorage1.xml \
    ${sysconfdir}/vehicle-keysvc/keysvc.toml \
    ${datadir}/vehicle-keysvc/profiles \
"
CONFFILES:${PN} = "${sysconfdir}/vehicle-keysvc/keysvc.toml"

# Recipe names as meta-python, meta-tpm and openembedded-core name them.
RDEPENDS:${PN} = "\
    dbus \
    libtss2-tcti-device \
    python3-asyncio \
    python3-can \
    python3-cantools \
    python3-core \
    python3-cryptography \
    python3-dbus-fast \
    python3-logging \
    python3-tomllib \
    python3-tpm2-pytss \
"
