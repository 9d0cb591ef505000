SUMMARY = "Minimal systemd image with the vehicle key service"
DESCRIPTION = "An image for runqemu on qemux86-64 with an swtpm TPM: the key \
               service, its D-Bus files, tpm2-tools and can-utils with a \
               virtual CAN interface to feed it frames."
SECTION = "images"
LICENSE = "MIT"
CVE_PRODUCT = ""

inherit core-image features_check

REQUIRED_DISTRO_FEATURES = "systemd tpm2"

IMAGE_FEATURES += "ssh-server-dropbear"

IMAGE_INSTALL:append = " \
    can-utils \
    iproute2 \
    tpm2-tools \
    vehicle-keysvc \
"
