// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title p2pnet agent registry: the ERC-8004 ("Trustless Agents") Identity Registry interface
/// @notice Each agent is an ERC-721 token; its id is the agentId (counting from 0, like the ERC's
/// reference contracts), its tokenURI the agentURI pointing at the agent's registration file.
/// The agentWallet is set to the registering address, can be moved to another address that
/// proves control with an EIP-712 signature, and is cleared when the token changes hands.
/// Self-contained (no imports) so one solc-js call builds it; p2pnet nodes rely only on the
/// ERC's interface, never on anything particular to this contract.
contract IdentityRegistry {
    struct MetadataEntry {
        string metadataKey;
        bytes metadataValue;
    }

    // -- ERC-721 events ---------------------------------------------------------------------
    event Transfer(address indexed from, address indexed to, uint256 indexed tokenId);
    event Approval(address indexed owner, address indexed approved, uint256 indexed tokenId);
    event ApprovalForAll(address indexed owner, address indexed operator, bool approved);
    // ERC-4906: the token's metadata (its URI) changed.
    event MetadataUpdate(uint256 _tokenId);

    // -- ERC-8004 events --------------------------------------------------------------------
    event Registered(uint256 indexed agentId, string agentURI, address indexed owner);
    event MetadataSet(
        uint256 indexed agentId,
        string indexed indexedMetadataKey,
        string metadataKey,
        bytes metadataValue
    );
    event URIUpdated(uint256 indexed agentId, string newURI, address indexed updatedBy);

    string public constant name = "AgentIdentity";
    string public constant symbol = "AGENT";

    bytes32 private constant AGENT_WALLET_KEY_HASH = keccak256("agentWallet");
    bytes32 private constant AGENT_WALLET_SET_TYPEHASH =
        keccak256("AgentWalletSet(uint256 agentId,address newWallet,address owner,uint256 deadline)");
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    uint256 private constant MAX_DEADLINE_DELAY = 5 minutes;
    // secp256k1n / 2: signatures with a larger s are malleable copies (EIP-2).
    uint256 private constant HALF_ORDER =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    uint256 private _lastId;
    mapping(uint256 => address) private _owners;
    mapping(address => uint256) private _balances;
    mapping(uint256 => address) private _tokenApprovals;
    mapping(address => mapping(address => bool)) private _operatorApprovals;
    mapping(uint256 => string) private _tokenURIs;
    mapping(uint256 => mapping(string => bytes)) private _metadata;
    mapping(uint256 => address) private _agentWallet;

    // -- ERC-165 ----------------------------------------------------------------------------

    function supportsInterface(bytes4 interfaceId) external pure returns (bool) {
        return interfaceId == 0x01ffc9a7 // ERC-165
            || interfaceId == 0x80ac58cd // ERC-721
            || interfaceId == 0x5b5e139f // ERC-721 metadata
            || interfaceId == 0x49064906; // ERC-4906
    }

    // -- ERC-721 ----------------------------------------------------------------------------

    function balanceOf(address owner) external view returns (uint256) {
        require(owner != address(0), "zero address");
        return _balances[owner];
    }

    function ownerOf(uint256 tokenId) public view returns (address owner) {
        owner = _owners[tokenId];
        require(owner != address(0), "nonexistent token");
    }

    function tokenURI(uint256 tokenId) external view returns (string memory) {
        ownerOf(tokenId);
        return _tokenURIs[tokenId];
    }

    function approve(address to, uint256 tokenId) external {
        address owner = ownerOf(tokenId);
        require(msg.sender == owner || _operatorApprovals[owner][msg.sender], "not authorized");
        _tokenApprovals[tokenId] = to;
        emit Approval(owner, to, tokenId);
    }

    function getApproved(uint256 tokenId) external view returns (address) {
        ownerOf(tokenId);
        return _tokenApprovals[tokenId];
    }

    function setApprovalForAll(address operator, bool approved) external {
        require(operator != address(0), "zero address");
        _operatorApprovals[msg.sender][operator] = approved;
        emit ApprovalForAll(msg.sender, operator, approved);
    }

    function isApprovedForAll(address owner, address operator) external view returns (bool) {
        return _operatorApprovals[owner][operator];
    }

    function transferFrom(address from, address to, uint256 tokenId) public {
        require(to != address(0), "zero address");
        address owner = ownerOf(tokenId);
        require(owner == from, "wrong owner");
        require(_authorized(owner, tokenId), "not authorized");
        delete _tokenApprovals[tokenId];
        _balances[from] -= 1;
        _balances[to] += 1;
        _owners[tokenId] = to;
        emit Transfer(from, to, tokenId);
        if (from != to && _agentWallet[tokenId] != address(0)) {
            // The verified wallet belonged to the previous owner's agent: it does not move along.
            delete _agentWallet[tokenId];
            delete _metadata[tokenId]["agentWallet"];
            emit MetadataSet(tokenId, "agentWallet", "agentWallet", "");
        }
    }

    function safeTransferFrom(address from, address to, uint256 tokenId) external {
        safeTransferFrom(from, to, tokenId, "");
    }

    function safeTransferFrom(address from, address to, uint256 tokenId, bytes memory data) public {
        transferFrom(from, to, tokenId);
        _checkReceiver(from, to, tokenId, data);
    }

    // -- ERC-8004 identity registry -------------------------------------------------------

    function register() external returns (uint256 agentId) {
        agentId = _register("", new MetadataEntry[](0));
    }

    function register(string calldata agentURI) external returns (uint256 agentId) {
        agentId = _register(agentURI, new MetadataEntry[](0));
    }

    function register(string calldata agentURI, MetadataEntry[] calldata metadata)
        external
        returns (uint256 agentId)
    {
        agentId = _register(agentURI, metadata);
    }

    function setAgentURI(uint256 agentId, string calldata newURI) external {
        require(_authorized(ownerOf(agentId), agentId), "not authorized");
        _tokenURIs[agentId] = newURI;
        emit MetadataUpdate(agentId);
        emit URIUpdated(agentId, newURI, msg.sender);
    }

    function getMetadata(uint256 agentId, string calldata metadataKey)
        external
        view
        returns (bytes memory)
    {
        return _metadata[agentId][metadataKey];
    }

    function setMetadata(uint256 agentId, string calldata metadataKey, bytes calldata metadataValue)
        external
    {
        require(_authorized(ownerOf(agentId), agentId), "not authorized");
        require(keccak256(bytes(metadataKey)) != AGENT_WALLET_KEY_HASH, "reserved key");
        _metadata[agentId][metadataKey] = metadataValue;
        emit MetadataSet(agentId, metadataKey, metadataKey, metadataValue);
    }

    function getAgentWallet(uint256 agentId) external view returns (address) {
        ownerOf(agentId);
        return _agentWallet[agentId];
    }

    /// @notice Point the agent at another wallet; `signature` is that wallet's EIP-712 signature
    /// of AgentWalletSet(agentId, newWallet, owner, deadline) (domain ERC8004IdentityRegistry/1).
    function setAgentWallet(uint256 agentId, address newWallet, uint256 deadline, bytes calldata signature)
        external
    {
        require(newWallet != address(0), "bad wallet");
        require(block.timestamp <= deadline, "expired");
        require(deadline <= block.timestamp + MAX_DEADLINE_DELAY, "deadline too far");
        address owner = ownerOf(agentId);
        require(_authorized(owner, agentId), "not authorized");
        bytes32 structHash = keccak256(abi.encode(AGENT_WALLET_SET_TYPEHASH, agentId, newWallet, owner, deadline));
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", _domainSeparator(), structHash));
        if (newWallet.code.length == 0) {
            require(_recover(digest, signature) == newWallet, "invalid wallet sig");
        } else {
            (bool ok, bytes memory ret) = newWallet.staticcall(
                abi.encodeWithSelector(0x1626ba7e, digest, signature) // ERC-1271 isValidSignature
            );
            require(ok && ret.length == 32 && abi.decode(ret, (bytes4)) == 0x1626ba7e, "invalid wallet sig");
        }
        _agentWallet[agentId] = newWallet;
        _metadata[agentId]["agentWallet"] = abi.encodePacked(newWallet);
        emit MetadataSet(agentId, "agentWallet", "agentWallet", abi.encodePacked(newWallet));
    }

    // -- internals --------------------------------------------------------------------------

    function _register(string memory agentURI, MetadataEntry[] memory metadata) private returns (uint256 agentId) {
        agentId = _lastId++;
        _agentWallet[agentId] = msg.sender;
        _tokenURIs[agentId] = agentURI;
        emit Registered(agentId, agentURI, msg.sender);
        for (uint256 i; i < metadata.length; i++) {
            require(keccak256(bytes(metadata[i].metadataKey)) != AGENT_WALLET_KEY_HASH, "reserved key");
            _metadata[agentId][metadata[i].metadataKey] = metadata[i].metadataValue;
            emit MetadataSet(agentId, metadata[i].metadataKey, metadata[i].metadataKey, metadata[i].metadataValue);
        }
        _owners[agentId] = msg.sender;
        _balances[msg.sender] += 1;
        emit Transfer(address(0), msg.sender, agentId);
        _checkReceiver(address(0), msg.sender, agentId, "");
    }

    function _authorized(address owner, uint256 tokenId) private view returns (bool) {
        return msg.sender == owner || _operatorApprovals[owner][msg.sender] || _tokenApprovals[tokenId] == msg.sender;
    }

    function _checkReceiver(address from, address to, uint256 tokenId, bytes memory data) private {
        if (to.code.length == 0) {
            return;
        }
        // IERC721Receiver.onERC721Received(operator, from, tokenId, data)
        (bool ok, bytes memory ret) =
            to.call(abi.encodeWithSelector(0x150b7a02, msg.sender, from, tokenId, data));
        require(ok && ret.length == 32 && abi.decode(ret, (bytes4)) == 0x150b7a02, "not an ERC721 receiver");
    }

    function _domainSeparator() private view returns (bytes32) {
        return keccak256(
            abi.encode(
                DOMAIN_TYPEHASH,
                keccak256("ERC8004IdentityRegistry"),
                keccak256("1"),
                block.chainid,
                address(this)
            )
        );
    }

    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address signer) {
        require(signature.length == 65, "bad signature length");
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        require(uint256(s) <= HALF_ORDER, "bad signature s");
        require(v == 27 || v == 28, "bad signature v");
        signer = ecrecover(digest, v, r, s);
        require(signer != address(0), "bad signature");
    }
}
